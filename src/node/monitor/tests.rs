use super::*;

fn spec(dir: &Path) -> MonitorSpec {
    MonitorSpec {
        id: "c1".into(),
        bundle: dir.join("bundle"),
        state_dir: dir.join("state"),
        log_path: dir.join("logs/0.log"),
        rotation: Rotation {
            max_size: 1234,
            max_files: 3,
        },
        runc: Runc::new("/usr/sbin/runc", dir.join("runc")),
        input: Input::default(),
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn exit_files_parse_into_typed_records() {
    let text = r#"{"exitCode":137,"signal":9,"startedAt":"2026-12-06T13:05:34.5Z",
        "finishedAt":"2026-12-06T13:05:40Z","oomKilled":true}"#;
    let r: ExitRecord = serde_json::from_str(text).unwrap();
    assert_eq!(r.exit_code, 137);
    assert_eq!(r.signal, Some(9));
    assert!(r.oom_killed);
    assert_eq!(r.start_error, None);
    assert_eq!(
        r.started_at.unwrap().unix_timestamp_nanos(),
        1_796_562_334_500_000_000
    );
    assert_eq!(r.finished_at.unix_timestamp(), 1_796_562_340);
    // What the monitor writes reads back the same.
    let again: ExitRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
    assert_eq!(again, r);
    // A start failure has no start time.
    let failed =
        r#"{"exitCode":128,"finishedAt":"2026-12-06T13:05:40Z","startError":"no such file"}"#;
    let r: ExitRecord = serde_json::from_str(failed).unwrap();
    assert_eq!(
        (r.started_at, r.start_error.as_deref()),
        (None, Some("no such file"))
    );
    // A damaged time is refused, not read as something else.
    assert!(
        serde_json::from_str::<ExitRecord>(r#"{"exitCode":0,"finishedAt":"yesterday"}"#).is_err()
    );
}

#[test]
fn the_monitors_arguments_round_trip() {
    let dir = Path::new("/x");
    let s = spec(dir);
    let args = MonitorArgs::parse(&spec_args(&s)).unwrap();
    assert_eq!(args.id, "c1");
    assert_eq!(args.bundle, s.bundle);
    assert_eq!(args.state_dir, s.state_dir);
    assert_eq!(args.log, s.log_path);
    assert_eq!(args.rotation, s.rotation);
    assert_eq!(args.runtime, PathBuf::from("/usr/sbin/runc"));
    assert_eq!(args.runc_root, PathBuf::from("/x/runc"));
    assert!(MonitorArgs::parse(&[OsString::from("--id")]).is_err());
    assert!(MonitorArgs::parse(&[OsString::from("--bogus"), OsString::from("1")]).is_err());
}

#[test]
fn the_launchers_report_becomes_a_start_or_runcs_error() {
    assert_eq!(
        parse_report("c1", "started 10 11", b"").unwrap(),
        Spawned {
            monitor_pid: 10,
            container_pid: 11
        }
    );
    let err = parse_report("c1", "failed exec: \"nope\": not found", b"").unwrap_err();
    assert!(matches!(&err, Error::Start { message, .. } if message == "exec: \"nope\": not found"));
    assert!(matches!(
        parse_report("c1", "", b"boom"),
        Err(Error::Report(_))
    ));
    assert!(matches!(
        parse_report("c1", "started 10", b""),
        Err(Error::Report(_))
    ));
}

#[test]
fn process_start_times_survive_odd_command_names() {
    let stat =
        "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
    assert_eq!(parse_stat(stat), Some(('S', 987654)));
    assert_eq!(parse_stat("garbage"), None);
    // This process, seen through /proc, is alive; a made-up start time is not it.
    let me = ProcessStamp::of(std::process::id() as i32).unwrap();
    assert!(me.is_alive());
    assert!(
        !ProcessStamp {
            start_time: me.start_time + 1,
            ..me
        }
        .is_alive()
    );
}

#[test]
fn the_oom_counter_is_found_in_v1_hybrid_and_v2_layouts() {
    let hybrid = "9:name=systemd:/k/c1\n4:memory:/k/c1\n1:cpu:/k/c1\n0::/k/c1\n";
    assert_eq!(
        oom_file(hybrid, false),
        Some((
            PathBuf::from("/sys/fs/cgroup/memory/k/c1/memory.oom_control"),
            "oom_kill"
        ))
    );
    let v2 = "0::/k/c1\n";
    assert_eq!(
        oom_file(v2, true),
        Some((
            PathBuf::from("/sys/fs/cgroup/k/c1/memory.events"),
            "oom_kill"
        ))
    );
    assert_eq!(
        oom_file(v2, false),
        Some((
            PathBuf::from("/sys/fs/cgroup/unified/k/c1/memory.events"),
            "oom_kill"
        ))
    );
    let v1_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
    assert_eq!(parse_counter(v1_control, "oom_kill"), Some(2));
    let v2_events = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
    assert_eq!(parse_counter(v2_events, "oom_kill"), Some(1));
    assert_eq!(parse_counter(v2_events, "oom_kil"), None);
}

#[test]
fn observing_a_state_dir_tells_absent_starting_running_exited_and_lost() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    assert_eq!(observe(state).unwrap(), Observed::Absent);

    // This test process stands in for a live monitor and container.
    let me = ProcessStamp::of(std::process::id() as i32).unwrap();
    let boot_id = current_boot_id().unwrap();
    let mut file = MonitorFile {
        boot_id: boot_id.clone(),
        monitor: me,
        container: None,
        started_at: None,
    };
    write_json_atomic(&state.join(MONITOR_FILE), &file).unwrap();
    assert_eq!(
        observe(state).unwrap(),
        Observed::Starting {
            monitor_pid: me.pid
        }
    );

    file.container = Some(me);
    file.started_at = Some("2026-12-06T13:05:34.5Z".into());
    write_json_atomic(&state.join(MONITOR_FILE), &file).unwrap();
    assert!(matches!(
        observe(state).unwrap(),
        Observed::Running { monitor_pid, started_at: Some(_), .. } if monitor_pid == me.pid
    ));

    // A pid reused by another process (another start time), or the same numbers from
    // before a reboot, is not the monitor.
    let recycled = ProcessStamp {
        start_time: me.start_time + 1,
        ..me
    };
    file.monitor = recycled;
    write_json_atomic(&state.join(MONITOR_FILE), &file).unwrap();
    assert_eq!(
        observe(state).unwrap(),
        Observed::Lost {
            container_pid: Some(me.pid)
        }
    );
    file.monitor = me;
    file.boot_id = "another-boot".into();
    write_json_atomic(&state.join(MONITOR_FILE), &file).unwrap();
    assert_eq!(
        observe(state).unwrap(),
        Observed::Lost {
            container_pid: None
        }
    );

    // An exit file wins over everything else.
    write(
        &state.join(EXIT_FILE),
        r#"{"exitCode":3,"finishedAt":"2026-12-06T13:05:40Z"}"#,
    );
    assert!(matches!(observe(state).unwrap(), Observed::Exited(r) if r.exit_code == 3));
    write(&state.join(EXIT_FILE), "{not json");
    assert!(matches!(observe(state), Err(Error::Corrupt { .. })));
}
