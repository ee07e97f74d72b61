//! systemd integration: the unit files keelson ships, printed by the hidden `keelson unit`
//! subcommand so the installer and the packages never carry their own copy.
//!
//! The units live in `targets/systemd/` and name the binary `/usr/local/bin/keelson`; the
//! install location is substituted when they are printed.

use std::path::{Path, PathBuf};

/// Which unit: the server's (`keelson.service`) or the agent's (`keelson-agent.service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Server,
    Agent,
}

/// The directory the shipped unit files name the binary in.
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";

/// The unit for `role` with the binary in `bin_dir` instead of [`DEFAULT_BIN_DIR`].
pub fn unit(role: Role, bin_dir: &Path) -> String {
    let text = match role {
        Role::Server => SERVER_UNIT,
        Role::Agent => AGENT_UNIT,
    };
    let dir = bin_dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    // `/` itself trims to nothing: the binary is then `/keelson`.
    text.replace(&format!("{DEFAULT_BIN_DIR}/"), &format!("{dir}/"))
}

/// `--bin-dir`: an absolute path, since systemd runs nothing else.
pub fn parse_bin_dir(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{s:?} is not an absolute path"))
    }
}

const SERVER_UNIT: &str = include_str!("../targets/systemd/keelson.service");
const AGENT_UNIT: &str = include_str!("../targets/systemd/keelson-agent.service");

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_start(unit: &str) -> Vec<&str> {
        unit.lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect()
    }

    #[test]
    fn units_name_the_binary_in_the_given_directory() {
        let server = unit(Role::Server, Path::new("/usr/bin"));
        assert_eq!(exec_start(&server), ["ExecStart=/usr/bin/keelson server"]);
        assert!(!server.contains(DEFAULT_BIN_DIR), "{server}");
        let agent = unit(Role::Agent, Path::new("/opt/keelson/bin/"));
        assert_eq!(
            exec_start(&agent),
            ["ExecStart=/opt/keelson/bin/keelson agent"]
        );
        assert!(agent.contains("EnvironmentFile=-/etc/systemd/system/keelson-agent.service.env"));
        assert!(parse_bin_dir("bin").is_err());
    }

    #[test]
    fn default_directory_prints_the_shipped_files_unchanged() {
        assert_eq!(unit(Role::Server, Path::new(DEFAULT_BIN_DIR)), SERVER_UNIT);
        assert_eq!(unit(Role::Agent, Path::new(DEFAULT_BIN_DIR)), AGENT_UNIT);
    }

    #[test]
    fn units_have_the_shape_the_installer_and_packages_rely_on() {
        for (text, env) in [
            (SERVER_UNIT, "keelson.service.env"),
            (AGENT_UNIT, "keelson-agent.service.env"),
        ] {
            for line in [
                "Type=notify",
                "KillMode=process",
                "Delegate=yes",
                "Restart=always",
                "After=network-online.target",
                "Wants=network-online.target",
                "EnvironmentFile=-/etc/default/%N",
                "EnvironmentFile=-/etc/sysconfig/%N",
                &format!("EnvironmentFile=-/etc/systemd/system/{env}"),
                "WantedBy=multi-user.target",
            ] {
                assert!(
                    text.lines().any(|l| l == line),
                    "missing {line:?} in\n{text}"
                );
            }
        }
    }
}
