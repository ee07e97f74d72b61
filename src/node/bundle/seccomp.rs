//! keelson's `RuntimeDefault` seccomp profile: everything is allowed except the system calls
//! that containerd's and Docker's default profiles keep from unprivileged containers, which
//! fail with `EPERM`. Those that a capability makes legitimate come back with it, as those
//! profiles do (`CAP_SYS_ADMIN` lets `mount` and `unshare` through, `CAP_SYS_PTRACE` lets
//! `ptrace`, ...).
//!
//! Why a deny-list (default allow) rather than their allow-list: the list of what must never
//! be reachable is short and stable, while an allow-list must track every new system call a
//! libc starts using. The cost is that a new dangerous system call is allowed until it is
//! listed here. `clone3` is refused with `ENOSYS` (its flags are in memory a filter cannot
//! read, so libcs fall back to `clone`, whose namespace flags are filtered) as those profiles
//! do.
//!
//! Invariants: names that do not exist on an architecture are harmless (runc skips a name
//! libseccomp cannot resolve, and libseccomp leaves a rule out for an architecture that lacks
//! the call); the architecture list holds the node's native one and its compat ones, because
//! a filter kills any process making a call under an architecture it does not list (its
//! bad-architecture action), so a 32-bit binary on a 64-bit node would die instead of being
//! filtered.

use serde_json::{Value, json};

/// `EPERM`: what a refused call returns (the same as a missing capability would).
const EPERM: u32 = 1;
/// `ENOSYS`: `clone3` "does not exist", so libcs fall back to `clone`.
const ENOSYS: u32 = 38;

/// The namespace flags of `clone` (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`,
/// `NEWUSER`, `NEWPID`, `NEWNET`, `NEWTIME`): refused without `CAP_SYS_ADMIN`.
const CLONE_NAMESPACE_FLAGS: [u64; 8] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
    0x0000_0080,
];

/// Refused system calls, each with the capability that allows it again (`None`: never).
const REFUSED: &[(Option<&str>, &[&str])] = &[
    // Kernel code and memory of other processes: modules, kexec, BPF, perf, handles.
    (
        Some("CAP_SYS_MODULE"),
        &[
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "query_module",
            "get_kernel_syms",
        ],
    ),
    (None, &["kexec_load", "kexec_file_load"]),
    (
        Some("CAP_SYS_ADMIN"),
        &[
            "bpf",
            "perf_event_open",
            "fanotify_init",
            "lookup_dcookie",
            "name_to_handle_at",
            "quotactl",
            "quotactl_fd",
            // Mounts and namespaces.
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "sethostname",
            "setdomainname",
            "swapon",
            "swapoff",
        ],
    ),
    (Some("CAP_DAC_READ_SEARCH"), &["open_by_handle_at"]),
    (
        Some("CAP_SYS_PTRACE"),
        &[
            "ptrace",
            "kcmp",
            "process_vm_readv",
            "process_vm_writev",
            "pidfd_getfd",
            "process_madvise",
        ],
    ),
    // The kernel keyring is not namespaced.
    (None, &["add_key", "keyctl", "request_key"]),
    // Clocks are the node's.
    (
        Some("CAP_SYS_TIME"),
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Some("CAP_SYS_BOOT"), &["reboot"]),
    (Some("CAP_SYS_PACCT"), &["acct"]),
    (Some("CAP_SYS_RAWIO"), &["iopl", "ioperm"]),
    (Some("CAP_SYS_TTY_CONFIG"), &["vhangup"]),
    (Some("CAP_SYS_CHROOT"), &["chroot"]),
    // userfaultfd makes kernel races easy to win; io_uring bypasses seccomp for the calls it
    // performs (both refused by Docker's current profile); the rest are obsolete.
    (
        None,
        &[
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "nfsservctl",
            "vm86",
            "vm86old",
        ],
    ),
];

/// The `linux.seccomp` section for a container with `capabilities` (its bounding set).
pub fn runtime_default(capabilities: &[String]) -> Value {
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    let refused: Vec<&str> = REFUSED
        .iter()
        .filter(|(cap, _)| cap.is_none_or(|c| !has(c)))
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let mut syscalls = vec![json!({
        "names": refused, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
    })];
    if !has("CAP_SYS_ADMIN") {
        // One rule per flag: a rule matches when (arg0 & flag) == flag, and any match refuses.
        for flag in CLONE_NAMESPACE_FLAGS {
            syscalls.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
        syscalls.push(json!({
            "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS,
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(std::env::consts::ARCH),
        "syscalls": syscalls,
    })
}

/// The node's architecture and those its kernel also runs binaries of.
pub fn architectures(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "x86" => &["SCMP_ARCH_X86"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => &["SCMP_ARCH_ARM"],
        "riscv64" => &["SCMP_ARCH_RISCV64"],
        // libseccomp adds the native architecture itself.
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(profile: &Value) -> Vec<String> {
        profile["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_default_profile_allows_all_but_the_dangerous_calls() {
        let defaults: Vec<String> = super::super::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let p = runtime_default(&defaults);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(p["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(p["syscalls"][0]["errnoRet"], 1);
        let names = refused(&p);
        for call in [
            "kexec_load",
            "init_module",
            "bpf",
            "perf_event_open",
            "ptrace",
            "keyctl",
            "add_key",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "swapon",
            "reboot",
            "settimeofday",
            "clock_settime",
            "open_by_handle_at",
            "userfaultfd",
            "acct",
            "quotactl",
            "lookup_dcookie",
        ] {
            assert!(names.iter().any(|n| n == call), "{call} is allowed");
        }
        // The default set has CAP_SYS_CHROOT: chroot stays allowed.
        assert!(!names.iter().any(|n| n == "chroot"));
        for call in ["read", "execve", "clone", "chmod"] {
            assert!(!names.iter().any(|n| n == call), "{call} is refused");
        }
        // clone only with namespace flags; clone3 not at all.
        let clone_rules: Vec<&Value> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"][0] == "clone")
            .collect();
        assert_eq!(clone_rules.len(), CLONE_NAMESPACE_FLAGS.len());
        assert_eq!(clone_rules[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert!(
            p["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["names"][0] == "clone3" && r["errnoRet"] == 38)
        );
    }

    #[test]
    fn added_capabilities_let_their_calls_through() {
        let caps = vec!["CAP_SYS_ADMIN".to_owned(), "CAP_SYS_PTRACE".to_owned()];
        let p = runtime_default(&caps);
        let names = refused(&p);
        for call in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "ptrace",
            "process_vm_readv",
        ] {
            assert!(!names.iter().any(|n| n == call), "{call} still refused");
        }
        for call in ["kexec_load", "keyctl", "init_module", "reboot", "chroot"] {
            assert!(names.iter().any(|n| n == call), "{call} let through");
        }
        // With CAP_SYS_ADMIN new namespaces are allowed: no clone rules.
        assert_eq!(p["syscalls"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn compat_architectures_are_listed() {
        assert_eq!(
            architectures("x86_64"),
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert_eq!(
            architectures("aarch64"),
            ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        );
        assert_eq!(architectures("arm"), ["SCMP_ARCH_ARM"]);
    }
}
