use std::path::Path;
use std::time::Duration;

use super::*;

const GOOD: &str = include_str!("../../config.example.yaml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.yaml"))
}

/// The 1-based line of the first line of `GOOD` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the example"))
        + 1
}

#[test]
fn example_config_is_valid_and_typed() {
    let cfg = parse(GOOD).expect("config.example.yaml must be valid");
    assert_eq!(cfg.dhcp.interfaces[0].mode, DhcpMode::Dhcp);
    assert_eq!(cfg.dhcp.subnets[0].lease_time, Duration::from_secs(3600));
    assert_eq!(cfg.http.public_url.base(), "http://10.77.0.1:8080");
    assert_eq!(
        cfg.images.tftp_nics,
        vec![PciId::parse("8086:1229").unwrap()]
    );
    assert_eq!(cfg.images.bios_x64.as_str(), "x86_64");
    let mac = Mac::parse("52-54-00-77-00-10").unwrap();
    assert_eq!(
        cfg.reservation_for(mac).and_then(|r| r.name.as_deref()),
        Some("lab-pc-10")
    );
    assert!(
        cfg.schedules.is_empty(),
        "a fresh install enlists at any hour"
    );
    let cfg = parse(&with_schedule()).expect("the example's schedule, uncommented");
    let night = cfg.schedule_of("room-101").expect("the example's schedule");
    assert_eq!(night.enlist.to_string(), "0 20 * * mon-fri");
    assert_eq!(night.wake, Wake::OnDemand);
    assert!(cfg.on_demand("room-101") && !cfg.on_demand("other"));
    assert_eq!(
        cfg.jobs.default_time,
        Some(Duration::from_secs(3600)),
        "a job needs a limit to fit a window"
    );
    assert_eq!(cfg.jobs.wake_timeout, Duration::from_secs(600));
}

#[test]
fn on_demand_wakes_need_enlists_own_slurm_and_all_is_the_default_without_it() {
    let no_jobs = with_schedule().replace("  enabled: true", "  enabled: false");
    assert_ne!(no_jobs, with_schedule(), "the example turns jobs on");
    let err = parse(&no_jobs).unwrap_err().to_string();
    assert!(
        err.contains("schedules[0].wake") && err.contains("on-demand needs"),
        "{err}"
    );
    let cfg = parse(&no_jobs.replace("wake: on-demand", "wake: all")).expect("all");
    assert_eq!(cfg.schedules[0].wake, Wake::All);
    assert_eq!(cfg.jobs.default_time, None, "no window to fit");
    let cfg = parse(&no_jobs.replace("    wake: on-demand\n", "")).expect("default");
    assert_eq!(cfg.schedules[0].wake, Wake::All);
    let err = parse(&with_schedule().replace("wake: on-demand", "wake: sometimes")).unwrap_err();
    assert!(err.to_string().contains("all or on-demand"), "{err}");
}

/// The example with its commented `schedules:` section taken in.
fn with_schedule() -> String {
    GOOD.replace("\n# schedules:\n", "\nschedules:\n")
        .replace("\n#   ", "\n  ")
}

#[test]
fn unknown_key_names_line_and_column() {
    let text = GOOD.replace("state_dir:", "stat_dir:");
    let err = parse(&text).unwrap_err().to_string();
    let line = line_of(GOOD, "state_dir:");
    assert!(err.starts_with(&format!("test.yaml:{line}:1:")), "{err}");
    assert!(err.contains("stat_dir"), "{err}");
}

#[test]
fn bad_value_is_named() {
    let text = GOOD.replace("subnet: 10.77.0.0/24", "subnet: 10.77.0.0/33");
    assert!(matches!(
        parse(&text).unwrap_err(),
        ConfigError::Parse { line, .. } if line > 0
    ));
}

/// A value that parses as YAML but means nothing: the error names file, line, column and key.
fn located(from: &str, to: &str, key: &str, anchor: &str) {
    located_in(GOOD, from, to, key, anchor);
}

fn located_in(good: &str, from: &str, to: &str, key: &str, anchor: &str) {
    let text = good.replacen(from, to, 1);
    let err = parse(&text).unwrap_err();
    let ConfigError::Invalid {
        line,
        column,
        key: k,
        ..
    } = &err
    else {
        panic!("{from} -> {to}: {err}");
    };
    assert_eq!(k, key, "{err}");
    assert_eq!(*line, line_of(&text, anchor), "{err}");
    assert!(*column > 1, "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("test.yaml:{line}:{column}: {key}: ")),
        "{err}"
    );
}

#[test]
fn semantic_errors_name_file_line_and_column() {
    located(
        "\"52:54:00:77:00:10\"",
        "\"52:54:00:77:00\"",
        "dhcp.subnets[0].reservations[0].mac",
        "52:54:00:77:00\"",
    );
    located(
        "[\"8086:1229\"]",
        "[\"8086:12x9\"]",
        "images.tftp_nics[0]",
        "8086:12x9",
    );
    located(
        "http://10.77.0.1:8080",
        "https://10.77.0.1:8080",
        "http.public_url",
        "https://",
    );
    located("bios: i586", "bios: ../i586", "images.bios", "../i586");
    located(
        "bios_x64: x86_64",
        "bios_x64: x86/64",
        "images.bios_x64",
        "x86/64",
    );
    located(
        "10.77.0.199",
        "10.78.0.199",
        "dhcp.subnets[0].pool",
        "10.78.0.199",
    );
    let scheduled = with_schedule();
    located_in(
        &scheduled,
        "\"0 20 * * mon-fri\"",
        "\"0 25 * * mon-fri\"",
        "schedules[0].enlist",
        "0 25 * *",
    );
    located_in(
        &scheduled,
        "group: room-101\n    enlist",
        "group: \"room 101\"\n    enlist",
        "schedules[0].group",
        "\"room 101\"",
    );
    located(
        "name: lab-pc-10",
        "name: \"lab pc\"",
        "dhcp.subnets[0].reservations[0].name",
        "lab pc",
    );
}

#[test]
fn flow_style_configs_are_located_too() {
    let text = "http: { listen: 127.0.0.1:1, public_url: ftp://x }\ndhcp: { interfaces: [{ name: lo, mode: proxy }] }\nimages: { dir: /x, bios: i586 }\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(
        err.starts_with("test.yaml:1:42: http.public_url: "),
        "{err}"
    );
}

#[test]
fn admin_tls_needs_both_files_and_a_listener() {
    let base = "http: { listen: 127.0.0.1:1, public_url: http://10.0.0.1 }\ndhcp: { interfaces: [{ name: lo, mode: proxy }] }\nimages: { dir: /x, bios: i586 }\n";
    let err = parse(&format!("{base}admin: {{ tls_cert: /c }}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin.tls_cert: tls_key is needed too"),
        "{err}"
    );
    let err = parse(&format!("{base}admin: {{ tls_cert: /c, tls_key: /k }}\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("only used with admin.listen"), "{err}");
    let ok = parse(&format!(
        "{base}admin: {{ listen: 127.0.0.1:8443, tls_cert: /c, tls_key: /k }}\n"
    ))
    .unwrap();
    assert!(ok.admin.tls.is_some());
}

/// Unset, the image of a 64-bit BIOS PC is `efi_x64`'s, which unset is `default`'s.
#[test]
fn the_64_bit_bios_image_defaults_to_the_uefi_one() {
    let base = "http: { listen: 127.0.0.1:1, public_url: http://10.0.0.1 }\ndhcp: { interfaces: [{ name: lo, mode: proxy }] }\n";
    let only_default = parse(&format!("{base}images: {{ dir: /x, bios: i586 }}\n")).unwrap();
    assert_eq!(only_default.images.bios_x64.as_str(), "i586");
    let with_efi = format!("{base}images: {{ dir: /x, bios: i586, efi_x64: amd64 }}\n");
    assert_eq!(parse(&with_efi).unwrap().images.bios_x64.as_str(), "amd64");
    let mac = Mac::parse("52:54:00:00:00:01").unwrap();
    let cfg = parse(&with_efi).unwrap();
    assert_eq!(cfg.bios_image(mac, false).as_str(), "i586");
    assert_eq!(cfg.bios_image(mac, true).as_str(), "amd64");
}

#[test]
fn a_jobs_default_memory_is_auto_or_a_number_of_mb() {
    let cfg = parse(GOOD).expect("the example");
    assert_eq!(cfg.jobs.def_mem_per_cpu, DefMem::Auto);
    let with = |v: &str| GOOD.replace("def_mem_per_cpu: auto", &format!("def_mem_per_cpu: {v}"));
    let cfg = parse(&with("64")).expect("a number");
    assert_eq!(cfg.jobs.def_mem_per_cpu, DefMem::Fixed(64));
    for bad in ["0", "lots"] {
        let e = parse(&with(bad)).expect_err(bad).to_string();
        assert!(e.contains("def_mem_per_cpu"), "{bad}: {e}");
    }
}

/// A proxy-mode room's subnet names the room (group, relays, reservations by MAC) and needs
/// no pool and no reserved address; a reserved address still must be inside its subnet.
#[test]
fn a_subnet_needs_no_pool_and_a_reservation_no_address() {
    let text = "http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }\n\
         dhcp:\n  interfaces: [{ name: br0, mode: proxy }]\n  subnets:\n\
         \x20   - { subnet: 10.78.0.0/24, relays: [10.78.0.1], group: room2,\n\
         \x20       reservations: [{ mac: \"52:54:00:78:00:01\", name: lab201-01 }] }\n\
         images: { dir: /nonexistent, bios: i586 }\n";
    let cfg = parse(text).expect("a subnet without pool");
    let s = &cfg.dhcp.subnets[0];
    assert_eq!((s.pool, s.reservations[0].ip), (None, None));
    let bad = text.replace("name: lab201-01", "name: lab201-01, ip: 10.79.0.5");
    let err = parse(&bad).unwrap_err().to_string();
    assert!(
        err.contains("reservations[0].ip") && err.contains("not inside"),
        "{err}"
    );
}

/// `router`, the old name of `routers`, is still read, and said where to change it; both at
/// once is an error.
#[test]
fn the_old_router_key_is_read_with_a_warning_at_its_line() {
    let text = |keys: &str| {
        format!(
            "http: {{ listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }}\n\
             images: {{ dir: /nonexistent, bios: i586 }}\n\
             dhcp:\n  interfaces: [{{ name: lo, mode: dhcp }}]\n  subnets:\n\
             \x20   - subnet: 10.77.0.0/24\n      pool: [10.77.0.100, 10.77.0.199]\n{keys}"
        )
    };
    let old = Config::parse(&text("      router: 10.77.0.1\n"), Path::new("enlist.yaml")).unwrap();
    assert_eq!(
        old.dhcp.subnets[0].routers,
        ["10.77.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    let warned: Vec<String> = old.deprecations().iter().map(ToString::to_string).collect();
    assert_eq!(warned.len(), 1);
    assert!(
        warned[0].contains("enlist.yaml:8:") && warned[0].contains("routers: [10.77.0.1]"),
        "{warned:?}"
    );
    let new = Config::parse(
        &text("      routers: [10.77.0.1, 10.77.0.2]\n"),
        Path::new("e.yaml"),
    )
    .unwrap();
    assert_eq!(new.dhcp.subnets[0].routers.len(), 2);
    assert!(new.deprecations().is_empty());
    let both = Config::parse(
        &text("      router: 10.77.0.1\n      routers: [10.77.0.1]\n"),
        Path::new("e.yaml"),
    );
    assert!(both.unwrap_err().to_string().contains("routers only"));
}

/// `images.default`, the old name of `images.bios` (it never applied to UEFI PCs), is still
/// read, and said where to change it; both at once, or neither, is an error.
#[test]
fn the_old_images_default_key_is_read_with_a_warning_at_its_line() {
    let text = |images: &str| {
        format!(
            "http: {{ listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }}\n\
             dhcp: {{ interfaces: [{{ name: lo, mode: proxy }}] }}\n\
             images:\n  dir: /nonexistent\n{images}"
        )
    };
    let old = Config::parse(&text("  default: i586\n"), Path::new("enlist.yaml")).unwrap();
    assert_eq!(old.images.bios.as_str(), "i586");
    assert_eq!(old.images.efi_x64.as_str(), "i586");
    let warned: Vec<String> = old.deprecations().iter().map(ToString::to_string).collect();
    assert_eq!(warned.len(), 1);
    assert!(
        warned[0].contains("enlist.yaml:5:") && warned[0].contains("write `bios: i586`"),
        "{warned:?}"
    );
    let new = Config::parse(&text("  bios: i586\n"), Path::new("e.yaml")).unwrap();
    assert!(new.deprecations().is_empty());
    let both = Config::parse(
        &text("  bios: i586\n  default: i586\n"),
        Path::new("e.yaml"),
    );
    assert!(both.unwrap_err().to_string().contains("bios only"));
    let neither = Config::parse(&text("  efi_x64: x86_64\n"), Path::new("e.yaml"));
    assert!(neither.unwrap_err().to_string().contains("images.bios"));
}

/// slurmd's port is its own key, `port + 1` unless given, and never slurmctld's.
#[test]
fn the_slurmd_port_defaults_to_the_next_one_and_may_be_set() {
    let text = |jobs: &str| {
        format!(
            "http: {{ listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }}\n\
             dhcp: {{ interfaces: [{{ name: lo, mode: proxy }}] }}\n\
             images: {{ dir: /nonexistent, bios: i586 }}\n\
             jobs: {{ enabled: true, {jobs} }}\n"
        )
    };
    let slurmd = |jobs: &str| match Config::parse(&text(jobs), Path::new("e.yaml"))
        .unwrap()
        .jobs
        .controller
    {
        crate::config::Controller::Managed { slurmd_port, .. } => slurmd_port,
        other => panic!("{other:?}"),
    };
    assert_eq!(slurmd("port: 7000"), 7001);
    assert_eq!(slurmd("port: 7000, slurmd_port: 7100"), 7100);
    let same = Config::parse(&text("port: 7000, slurmd_port: 7000"), Path::new("e.yaml"));
    assert!(same.unwrap_err().to_string().contains("jobs.slurmd_port"));
}
