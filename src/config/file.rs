//! The config file's grammar: a YAML map of flag names to values, turned into `--flag=value`
//! arguments that clap then parses like the command line. Pure (text in, arguments out), so
//! the fuzz build (`fuzz/`) feeds it arbitrary files; reading the file and the precedence of
//! flag > environment > file stay in [`super`].

use std::collections::BTreeMap;
use std::path::Path;

/// Turns the config file into `--flag=value` arguments for flags not set elsewhere (`unset`
/// says which, by clap id); every problem found, when there are any.
pub fn args(
    text: &str,
    path: &Path,
    cmd: &clap::Command,
    unset: impl Fn(&str) -> bool,
) -> Result<Vec<String>, Vec<String>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let at = path.display();
    let doc = map(text, path).map_err(|e| vec![e])?;
    let mut problems = Vec::new();
    let mut args = Vec::new();
    for (key, value) in doc {
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            problems.push(format!(
                "config file {at}: unknown key {key:?} (keys are the {}'s flag names)",
                cmd.get_name()
            ));
            continue;
        };
        if key == "config" {
            problems.push(format!(
                "config file {at}: key \"config\" cannot be set from a config file"
            ));
            continue;
        }
        if !unset(arg.get_id().as_str()) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let scalars = match value {
            serde_yaml::Value::Sequence(items) => items,
            other => vec![other],
        };
        for v in scalars {
            let Some(text) = scalar(v) else {
                problems.push(format!("config file {at}: key {key:?} must be a string, number, boolean or a list of those"));
                continue;
            };
            if takes_value {
                args.push(format!("--{key}={text}"));
            } else if text == "true" {
                args.push(format!("--{key}"));
            } else if text != "false" {
                problems.push(format!(
                    "config file {at}: key {key:?} must be true or false, not {text:?}"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(args)
    } else {
        Err(problems)
    }
}

/// The file as a map of keys to values; the one place its top-level shape is checked, also
/// for the commands that read a few keys of the server's file (`keelson datastore`).
pub fn map(text: &str, path: &Path) -> Result<BTreeMap<String, serde_yaml::Value>, String> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_yaml::from_str(text).map_err(|e| {
        format!(
            "config file {}: expected a map of flag names to values: {e}",
            path.display()
        )
    })
}

/// A value as the text a flag would take; `None` for lists and maps.
pub fn scalar(value: serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
