//! The head's systemd unit, applied without systemd: this machine's PID 1 is no systemd, so
//! the install test reads the installed unit's sandboxing directives and makes the same
//! confinement with a mount namespace, bind mounts and `setpriv`, then runs its `ExecStart`.
//!
//! Emulated (the directives that decide what the head and its helpers may write and do):
//! `ProtectSystem=strict` (the root read-only), `ReadWritePaths=` (`-` = may be missing),
//! `StateDirectory=`, `RuntimeDirectory=` (+ `...Mode=`), `PrivateTmp=`, `ProtectHome=true`,
//! `PrivateDevices=`, `NoNewPrivileges=`, `CapabilityBoundingSet=` (`~` lists), `UMask=`.
//! Not emulated, said by [`Sandbox::not_emulated`]: the seccomp and kernel-tunable ones
//! (`SystemCallArchitectures=`, `RestrictAddressFamilies=`, `RestrictNamespaces=`, `Protect
//! Kernel*=`, ...): they refuse system calls; `systemd-analyze security` scores them.

use anyhow::{bail, Context};

/// What a unit's `[Service]` section asks, as far as it is emulated here.
#[derive(Debug, Default, PartialEq)]
pub struct Sandbox {
    /// ExecStart's words.
    pub exec_start: Vec<String>,
    /// (path, may be missing)
    pub read_write: Vec<(String, bool)>,
    /// (folder under /var/lib, mode)
    pub state_dir: Option<(String, String)>,
    /// (folder under /run, mode)
    pub runtime_dir: Option<(String, String)>,
    pub private_tmp: bool,
    pub protect_home: bool,
    pub private_devices: bool,
    pub no_new_privileges: bool,
    /// Capabilities taken from the bounding set (`CapabilityBoundingSet=~...`), lowercase,
    /// without `cap_`, as setpriv names them.
    pub dropped_caps: Vec<String>,
    pub umask: Option<String>,
    /// Directives of the section this does not make (for the report).
    pub not_emulated: Vec<String>,
}

/// Directives with no effect on what a root service may do to files or capabilities here.
const NOT_CONFINING: [&str; 11] = [
    "Description",
    "ExecReload",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "LimitNOFILE",
    "TimeoutStopSec",
    "AmbientCapabilities",
    "StateDirectoryMode",
    "RuntimeDirectoryMode",
    "Type",
];

impl Sandbox {
    /// The `[Service]` section of `unit`; an unsupported value of an emulated directive is an
    /// error (the test would otherwise prove less than it says).
    pub fn from_unit(unit: &str) -> anyhow::Result<Sandbox> {
        let mut sb = Sandbox::default();
        let mut protect_system = None;
        let mut modes = std::collections::HashMap::new();
        let mut in_service = false;
        for (n, line) in unit.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            if !in_service || line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("unit line {}: no '=': {line}", n + 1))?;
            let yes = value == "true" || value == "yes";
            match key {
                "ExecStart" => {
                    sb.exec_start = value.split_whitespace().map(str::to_string).collect()
                }
                "ProtectSystem" => protect_system = Some(value.to_string()),
                "ReadWritePaths" => {
                    sb.read_write.extend(value.split_whitespace().map(
                        |p| match p.strip_prefix('-') {
                            Some(p) => (p.to_string(), true),
                            None => (p.to_string(), false),
                        },
                    ))
                }
                "StateDirectory" => sb.state_dir = Some((value.to_string(), String::new())),
                "RuntimeDirectory" => sb.runtime_dir = Some((value.to_string(), String::new())),
                "StateDirectoryMode" | "RuntimeDirectoryMode" => {
                    modes.insert(key.to_string(), value.to_string());
                }
                "PrivateTmp" => sb.private_tmp = yes,
                "ProtectHome" if value == "true" || value == "false" => sb.protect_home = yes,
                "ProtectHome" => bail!(
                    "unit line {}: ProtectHome={value}: only true is emulated",
                    n + 1
                ),
                "PrivateDevices" => sb.private_devices = yes,
                "NoNewPrivileges" => sb.no_new_privileges = yes,
                "UMask" => sb.umask = Some(value.to_string()),
                "CapabilityBoundingSet" => {
                    let Some(list) = value.strip_prefix('~') else {
                        bail!("unit line {}: CapabilityBoundingSet without '~': only lists of what is taken away are emulated", n + 1)
                    };
                    sb.dropped_caps.extend(
                        list.split_whitespace()
                            .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase()),
                    );
                }
                _ if NOT_CONFINING.contains(&key) => {}
                _ => sb.not_emulated.push(line.to_string()),
            }
        }
        if protect_system.as_deref() != Some("strict") {
            bail!(
                "the unit's ProtectSystem is {protect_system:?}: the emulation makes strict only"
            );
        }
        if sb.exec_start.is_empty() {
            bail!("the unit has no ExecStart");
        }
        let mode = |key: &str| modes.get(key).cloned().unwrap_or_else(|| "0755".into());
        if let Some(d) = &mut sb.state_dir {
            d.1 = mode("StateDirectoryMode");
        }
        if let Some(d) = &mut sb.runtime_dir {
            d.1 = mode("RuntimeDirectoryMode");
        }
        Ok(sb)
    }

    /// A shell script, run as root in a new mount namespace (`unshare --mount
    /// --propagation private`), that confines the root folder `root` as the unit would and
    /// execs ExecStart chrooted in it.
    pub fn script(&self, root: &str) -> String {
        let mut s = format!("set -e\nR='{root}'\n");
        let mut writable: Vec<String> = vec![];
        if let Some((dir, mode)) = &self.state_dir {
            s += &format!("mkdir -p \"$R/var/lib/{dir}\"; chmod {mode} \"$R/var/lib/{dir}\"\n");
            writable.push(format!("/var/lib/{dir}"));
        }
        if let Some((dir, mode)) = &self.runtime_dir {
            s += &format!("mkdir -p \"$R/run/{dir}\"; chmod {mode} \"$R/run/{dir}\"\n");
            writable.push(format!("/run/{dir}"));
        }
        // ProtectSystem=strict: the root itself a mount (made read-only last), the writable
        // paths bound on themselves first so they stay writable.
        s += "mount --bind \"$R\" \"$R\"\n";
        for (path, optional) in &self.read_write {
            if *optional {
                s += &format!(
                    "if [ -e \"$R{path}\" ]; then mount --bind \"$R{path}\" \"$R{path}\"; fi\n"
                );
            } else {
                s += &format!("mount --bind \"$R{path}\" \"$R{path}\"\n");
            }
        }
        for path in &writable {
            s += &format!("mount --bind \"$R{path}\" \"$R{path}\"\n");
        }
        if self.private_tmp {
            s += "mount -t tmpfs -o mode=1777 tmpfs \"$R/tmp\"\nmount -t tmpfs -o mode=1777 tmpfs \"$R/var/tmp\"\n";
        }
        if self.protect_home {
            s += "for d in home root run/user; do if [ -d \"$R/$d\" ]; then mount -t tmpfs -o mode=000 tmpfs \"$R/$d\"; fi; done\n";
        }
        if self.private_devices {
            s += "mount -t tmpfs -o mode=755,nosuid,noexec tmpfs \"$R/dev\"\n\
                  for d in null zero full random urandom tty; do touch \"$R/dev/$d\"; mount --bind /dev/$d \"$R/dev/$d\"; done\n\
                  mkdir \"$R/dev/shm\" \"$R/dev/pts\"; mount -t tmpfs -o mode=1777 tmpfs \"$R/dev/shm\"\n\
                  ln -s /proc/self/fd \"$R/dev/fd\"\n";
        } else {
            s += "mount --rbind /dev \"$R/dev\"\n";
        }
        s += "mount -t proc proc \"$R/proc\"\nmount --rbind /sys \"$R/sys\"\n";
        s += "mount -o remount,bind,ro \"$R\"\n";
        if let Some(umask) = &self.umask {
            s += &format!("umask {umask}\n");
        }
        let mut setpriv = String::from("setpriv");
        if self.no_new_privileges {
            setpriv += " --no-new-privs";
        }
        if !self.dropped_caps.is_empty() {
            let caps: Vec<String> = self.dropped_caps.iter().map(|c| format!("-{c}")).collect();
            setpriv += &format!(" --bounding-set={}", caps.join(","));
        }
        s += &format!(
            "exec chroot \"$R\" {setpriv} -- {}\n",
            self.exec_start.join(" ")
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Sandbox;

    /// The package's unit is read whole: what it confines is emulated, and what is not is
    /// only the system-call filters.
    #[test]
    fn the_packages_unit_is_emulated_but_for_its_syscall_filters() {
        let unit = include_str!("../../debian/enlist.service");
        let sb = Sandbox::from_unit(unit).expect("unit");
        assert_eq!(sb.exec_start[0], "/usr/local/bin/enlist");
        assert!(sb.private_tmp && sb.protect_home && sb.private_devices && sb.no_new_privileges);
        assert!(sb.dropped_caps.contains(&"sys_admin".to_string()));
        assert!(sb.read_write.contains(&("/etc/exports.d".into(), true)));
        assert_eq!(sb.runtime_dir, Some(("enlist".into(), "0755".into())));
        for line in &sb.not_emulated {
            assert!(
                line.starts_with("Protect")
                    || line.starts_with("Restrict")
                    || line.starts_with("SystemCall")
                    || line.starts_with("LockPersonality"),
                "{line}"
            );
        }
        let script = sb.script("/r");
        assert!(script.contains("mount -o remount,bind,ro \"$R\""));
        assert!(
            script.ends_with("-- /usr/local/bin/enlist serve --config /etc/enlist/config.yaml\n")
        );
    }

    #[test]
    fn a_unit_that_is_not_strict_is_refused() {
        let unit = "[Service]\nExecStart=/bin/true\nProtectSystem=full\n";
        assert!(Sandbox::from_unit(unit).is_err());
    }
}
