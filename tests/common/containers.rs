//! Container runtimes for the tests, each with a private configuration,
//! storage and CNI plugin directory under a temporary directory: podman 4.3
//! (CNI backend) and containerd 1.6 with `ctr`. Root filesystems are made
//! of busybox-static, or the host's own `/` (for the Python probes).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Account, BIN, sh};

/// A private podman: containers.conf, storage and CNI dirs under `dir`.
pub struct Podman {
    pub dir: PathBuf,
}

const BUSYBOX_APPLETS: &[&str] =
    &["sh", "wget", "ip", "cat", "nslookup", "sleep", "echo", "tftp", "ls", "true", "cut", "tr", "timeout"];

/// A root filesystem of busybox-static (no registry needed).
pub fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed (scripts/install-deps.sh)");
    for a in BUSYBOX_APPLETS {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    // What a static binary's name lookup reads.
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n").expect("nsswitch");
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").expect("hosts");
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    root
}

/// The plugin directory: `nsproxy-cni` (this build) and Debian's plugins.
pub fn plugin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("cni-bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let _ = std::os::unix::fs::symlink(BIN, bin.join("nsproxy-cni"));
    let _ = std::os::unix::fs::symlink("/usr/lib/cni/loopback", bin.join("loopback"));
    bin
}

pub fn conflist(name: &str, account: &Account) -> String {
    format!(
        r#"{{"cniVersion":"0.4.0","name":"{name}","plugins":[{{"type":"nsproxy-cni","account":"{}","policies":"{}"}}]}}"#,
        account.name,
        account.policy.display()
    )
}

impl Podman {
    pub fn new(tag: &str) -> Podman {
        let dir = std::env::temp_dir().join(format!("nsproxy-podman-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net.d")).expect("dir");
        let bin = plugin_dir(&dir);
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{0}/events.log\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{1}\"]\nnetwork_config_dir = \"{0}/net.d\"\n",
                dir.display(),
                bin.display()
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            dir.join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n", dir.display()),
        )
        .expect("storage.conf");
        rootfs(&dir);
        Podman { dir }
    }

    pub fn network(&self, name: &str, account: &Account) {
        std::fs::write(self.dir.join("net.d").join(format!("{name}.conflist")), conflist(name, account))
            .expect("conflist");
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"]);
        c
    }

    /// `podman run --rm --network NET --rootfs ROOTFS sh -c SCRIPT`.
    pub fn run(&self, network: &str, script: &str) -> Output {
        self.cmd()
            .args(["run", "--rm", "--network", network])
            .arg("--rootfs")
            .arg(self.dir.join("rootfs"))
            .args(["/bin/sh", "-c", script])
            .output()
            .expect("podman run")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| !sh(&format!("command -v {t}")).status.success()).collect();
    if missing.is_empty() && Path::new("/bin/busybox").exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {missing:?} or /bin/busybox missing: scripts/install-deps.sh installs them");
    }
    eprintln!("\n!!!!! SKIPPED {test}: {missing:?} or busybox-static missing (scripts/install-deps.sh) !!!!!\n");
    false
}

/// A root filesystem whose programs are the host's (`/usr` is bound in
/// read-only by `Podman::start`): Python, curl, ping for the probes.
pub fn usr_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("usr-rootfs");
    for d in ["usr", "etc", "proc", "sys", "dev", "tmp", "run", "root"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    for l in ["bin", "sbin", "lib", "lib64"] {
        let _ = std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l));
    }
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\npasswd: files\ngroup: files\n")
        .expect("nsswitch");
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").expect("hosts");
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    root
}

impl Podman {
    /// Starts a long-running container (`sleep`) on `network` with the
    /// host's `/usr` and `share` bound in read-only; returns its id.
    pub fn start(&self, network: &str, share: &Path) -> String {
        let root = usr_rootfs(&self.dir);
        let o = self
            .cmd()
            .args(["run", "-d", "--network", network, "-v", "/usr:/usr:ro"])
            .arg("-v")
            .arg(format!("{0}:{0}:ro", share.display()))
            .arg("--rootfs")
            .arg(&root)
            .args(["/usr/bin/sleep", "600"])
            .output()
            .expect("podman run -d");
        assert!(
            o.status.success(),
            "podman run -d: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Runs `argv` in a running container.
    pub fn exec(&self, id: &str, argv: &[&str]) -> Output {
        self.cmd().args(["exec", id]).args(argv).output().expect("podman exec")
    }

    /// The container's main process (its network namespace is `/proc/PID/ns/net`).
    pub fn pid(&self, id: &str) -> i32 {
        let o = self.cmd().args(["inspect", "-f", "{{.State.Pid}}", id]).output().expect("podman inspect");
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)
    }

    pub fn remove(&self, id: &str) -> Output {
        self.cmd().args(["rm", "-f", "-t", "0", id]).output().expect("podman rm")
    }
}

/// A private containerd (its own root, state and socket; the CRI plugin
/// off) for `ctr run --cni`, which reads the first file of `/etc/cni/net.d`
/// and plugins from `/opt/cni/bin`: the test's network goes there first
/// (`00-...`) and every file it adds is removed on drop.
pub struct Containerd {
    pub dir: PathBuf,
    child: std::process::Child,
    added: Vec<PathBuf>,
    made_dirs: Vec<PathBuf>,
}

impl Containerd {
    pub fn new(tag: &str, network: &str, account: &Account) -> Containerd {
        let dir = std::env::temp_dir().join(format!("nsproxy-ctrd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // ctr writes no resolv.conf: the image's names the account's DNS
        // (any address would do: every query on port 53 meets the TUN).
        let root = rootfs(&dir);
        std::fs::write(root.join("etc/resolv.conf"), "nameserver 198.18.0.2\n").expect("resolv.conf");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/containerd.sock\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
                dir.display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut me = Containerd { dir: dir.clone(), child, added: Vec::new(), made_dirs: Vec::new() };
        let sock = dir.join("containerd.sock");
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            sock.exists(),
            "containerd did not start: {}",
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
        for d in ["/opt/cni", "/opt/cni/bin", "/etc/cni", "/etc/cni/net.d"] {
            if !Path::new(d).exists() {
                std::fs::create_dir(d).expect("cni dir");
                me.made_dirs.push(d.into());
            }
        }
        for (name, target) in [("nsproxy-cni", BIN), ("loopback", "/usr/lib/cni/loopback")] {
            let link = Path::new("/opt/cni/bin").join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(target, &link).expect("plugin link");
                me.added.push(link);
            }
        }
        let conf = Path::new("/etc/cni/net.d").join(format!("00-nsproxy-test-{}.conflist", std::process::id()));
        std::fs::write(&conf, conflist(network, account)).expect("conflist");
        me.added.push(conf);
        me
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.dir.join("containerd.sock"));
        c
    }

    /// `ctr run --rm --cni --rootfs ROOTFS ID sh -c SCRIPT`.
    pub fn run(&self, id: &str, script: &str) -> Output {
        self.ctr()
            .args(["run", "--rm", "--cni", "--rootfs"])
            .arg(self.dir.join("rootfs"))
            .args([id, "/bin/sh", "-c", script])
            .output()
            .expect("ctr run")
    }
}

impl Containerd {
    /// `ctr run --rm --with-ns network:NETNS`: a namespace made elsewhere
    /// (by `nsproxy up`), no CNI.
    pub fn ctr_run_with_ns(&self, id: &str, netns: &str, script: &str) -> Output {
        self.ctr()
            .args(["run", "--rm", "--with-ns", &format!("network:{netns}"), "--rootfs"])
            .arg(self.dir.join("rootfs"))
            .args([id, "/bin/sh", "-c", script])
            .output()
            .expect("ctr run")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The containerd this test started, by its pid: TERM, then KILL.
        let _ = sh(&format!("kill {}", self.child.id()));
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for f in self.added.drain(..).rev() {
            let _ = std::fs::remove_file(f);
        }
        for d in self.made_dirs.drain(..).rev() {
            let _ = std::fs::remove_dir(d);
        }
        let _ = sh(&format!(
            "umount -R {}/state 2>/dev/null; umount -R {}/root 2>/dev/null",
            self.dir.display(),
            self.dir.display()
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
