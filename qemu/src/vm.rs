//! A running VM: started from an image through a copy-on-write overlay, watched through its
//! serial console, killed when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::console;
use crate::machine::{Boot, Machine, VmFiles};
use crate::seed::{SeedDisk, SeedError};
use crate::shell::{Shell, ShellError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Seed(#[from] SeedError),
    #[error("{vm}: {source}")]
    Shell { vm: String, source: ShellError },
    #[error("{vm} has no test shell port (Machine::shell_port)")]
    NoShell { vm: String },
    #[error("qemu-img could not make an overlay of {image}: {reason}")]
    Overlay { image: PathBuf, reason: String },
    #[error("{vm}: no {what} after {secs} s; the console ends with:\n{tail}")]
    Timeout {
        vm: String,
        what: String,
        secs: u64,
        tail: String,
    },
    #[error("{vm}: QEMU exited ({status}) while waiting for {what}; the console ends with:\n{tail}\nQEMU said: {stderr}")]
    Exited {
        vm: String,
        what: String,
        status: String,
        tail: String,
        stderr: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// A booting or booted VM.
pub struct Vm {
    name: String,
    /// QEMU's program, arguments and namespace: what [`Vm::power_on`] starts again.
    program: String,
    args: Vec<String>,
    netns: Option<String>,
    child: Child,
    dir: tempfile::TempDir,
    console_path: PathBuf,
    shell_path: Option<PathBuf>,
    shell: Option<Shell>,
    started: Instant,
}

impl Vm {
    /// Boots `image` (raw or qcow2, never written: the VM writes to an overlay) as `machine`,
    /// with an optional seed disk.
    pub fn start(machine: &Machine, image: &Path, seed: Option<&SeedDisk>) -> Result<Vm, VmError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("uncloud-vm-{}-", machine.name))
            .tempdir()
            .map_err(io("cannot make the VM's directory"))?;
        let image =
            std::fs::canonicalize(image).map_err(io(format!("image {}", image.display())))?;
        let image_format = if image.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let disk = dir.path().join("disk.qcow2");
        let mut create = Command::new("qemu-img");
        create.args(["create", "-q", "-f", "qcow2", "-F", image_format, "-b"]);
        create.arg(&image).arg(&disk);
        // Only raw images need their size here (the Pi's SD card); a qcow2 keeps its own.
        let image_bytes = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
        if let Some(size) = machine.disk_size(image_bytes) {
            create.arg(size.to_string());
        }
        let out = create
            .output()
            .map_err(io("cannot run qemu-img (package qemu-utils)"))?;
        if !out.status.success() {
            return Err(VmError::Overlay {
                image,
                reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let vars = match machine.boot {
            Boot::Uefi => {
                let (_, template) = machine.uefi_firmware();
                let vars = dir.path().join("vars.fd");
                std::fs::copy(template, &vars).map_err(io(format!(
                    "UEFI variables {template} (package ovmf or qemu-efi-aarch64)"
                )))?;
                Some(vars)
            }
            _ => None,
        };
        let seed_path = match seed {
            Some(seed) => {
                let path = dir.path().join("seed.img");
                seed.write(&path)?;
                Some(path)
            }
            None => None,
        };
        let routes = match &machine.metadata {
            Some(service) => {
                let routes = dir.path().join("metadata");
                service
                    .write_routes(&routes)
                    .map_err(io("cannot write the metadata service's documents"))?;
                Some(routes)
            }
            None => None,
        };
        let console_path = dir.path().join("console.log");
        std::fs::write(&console_path, b"").map_err(io("cannot create the console log"))?;
        let shell_path = machine.shell_port.then(|| dir.path().join("shell.sock"));
        let args = machine.args(&VmFiles {
            disk: &disk,
            disk_format: "qcow2",
            console: &console_path,
            vars: vars.as_deref(),
            seed: seed_path.as_deref(),
            metadata_routes: routes.as_deref(),
            shell: shell_path.as_deref(),
        });
        let program = machine.program().to_owned();
        let child = spawn(&program, &args, machine.netns.as_deref(), dir.path())?;
        let mut vm = Vm {
            name: machine.name.clone(),
            program,
            args,
            netns: machine.netns.clone(),
            child,
            dir,
            console_path,
            shell_path,
            shell: None,
            started: Instant::now(),
        };
        vm.connect_shell()?;
        Ok(vm)
    }

    /// Connects to the test shell's socket (there as soon as QEMU runs): with the host side
    /// connected, the guest's shell waits for commands instead of reading end-of-file and
    /// being restarted every second while the guest boots.
    fn connect_shell(&mut self) -> Result<(), VmError> {
        if let Some(path) = &self.shell_path {
            let shell =
                Shell::connect(path, Duration::from_secs(10)).map_err(|source| VmError::Shell {
                    vm: self.name.clone(),
                    source,
                })?;
            self.shell = Some(shell);
        }
        Ok(())
    }

    /// Cuts the VM's power: QEMU is killed (SIGKILL) with the guest running. What the guest
    /// had flushed is in its disk (cache mode `writeback`), the rest is lost, as in a power
    /// cut of a real machine.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.shell = None;
    }

    /// Whether QEMU still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Powers the VM on again after [`Vm::crash`] (or after the guest powered off): the same
    /// machine, disk, UEFI variables and seed; its console goes on in the same log (use
    /// [`Vm::mark`] before, to wait for what the new boot prints).
    pub fn power_on(&mut self) -> Result<(), VmError> {
        if self.is_running() {
            self.crash();
        }
        self.shell = None;
        if let Some(path) = &self.shell_path {
            let _ = std::fs::remove_file(path);
        }
        self.child = spawn(
            &self.program,
            &self.args,
            self.netns.as_deref(),
            self.dir.path(),
        )?;
        self.started = Instant::now();
        self.connect_shell()
    }

    /// Runs `command` in the guest's test shell (see [`crate::shell`]): its exit status and
    /// output. Waits up to `timeout`, also for the shell to start while the guest boots.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String), VmError> {
        if self.shell_path.is_none() {
            return Err(VmError::NoShell {
                vm: self.name.clone(),
            });
        }
        if self.shell.is_none() {
            self.connect_shell()?;
        }
        let shell = self.shell.as_mut().expect("connected above");
        let result = shell.run(command, timeout);
        if result.is_err() {
            // A timed-out or broken session may still deliver the old command's output.
            self.shell = None;
        }
        result.map_err(|source| VmError::Shell {
            vm: self.name.clone(),
            source,
        })
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the serial console printed so far, as plain text.
    pub fn console(&self) -> String {
        let raw = std::fs::read(&self.console_path).unwrap_or_default();
        console::strip_escapes(&String::from_utf8_lossy(&raw))
    }

    /// Waits until a console line satisfies `matches`, and returns that line. Fails when the
    /// time is up or QEMU exits, showing the end of the console.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, VmError> {
        self.wait_for_line_since(0, what, timeout, matches)
    }

    /// Where the console is now, for [`Vm::wait_for_line_since`]: to wait for what comes
    /// after an event (a reboot's second banner, not the first).
    pub fn mark(&self) -> usize {
        self.console().len()
    }

    /// [`Vm::wait_for_line`], looking only at what the console printed after `mark`.
    pub fn wait_for_line_since(
        &mut self,
        mark: usize,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            let after = text.get(mark..).unwrap_or_default();
            if let Some(line) = console::find_line(after, &matches) {
                return Ok(line.to_owned());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(VmError::Exited {
                    vm: self.name.clone(),
                    what: what.to_owned(),
                    status: status.to_string(),
                    tail: console::tail(&text, 40),
                    stderr: std::fs::read_to_string(self.dir.path().join("qemu.stderr"))
                        .unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    vm: self.name.clone(),
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                    tail: console::tail(&text, 40),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops QEMU and writes the VM's disk as it was then, as a raw image at `to`: for
    /// checking what the guest wrote. The guest is not shut down (as if its power were cut),
    /// but QEMU ends on SIGTERM, writing out its own caches of the disk image: an emulated SD
    /// card has no flush command, so a SIGKILL could lose writes the guest had made.
    pub fn stop_and_save_disk(&mut self, to: &Path) -> Result<(), VmError> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let disk = self.dir.path().join("disk.qcow2");
        let out = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&disk)
            .arg(to)
            .output()
            .map_err(io("cannot run qemu-img (package qemu-utils)"))?;
        if !out.status.success() {
            return Err(VmError::Overlay {
                image: disk,
                reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Saves the whole console to `dir/<name>.console.log` (for CI artefacts) and returns
    /// the path.
    pub fn save_console(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.console.log", self.name));
        std::fs::write(&path, self.console())?;
        Ok(path)
    }
}

/// Starts QEMU with `args` (in `netns`, if any), its stderr appended to `dir/qemu.stderr`.
fn spawn(
    program: &str,
    args: &[String],
    netns: Option<&str>,
    dir: &Path,
) -> Result<Child, VmError> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("qemu.stderr"))
        .map_err(io("cannot create QEMU's stderr log"))?;
    // In a namespace (where its tap is): nsenter, which keeps the host's mounts.
    let mut qemu = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    };
    // QEMU dies with the thread that started it: a test killed from outside (CI's timeout,
    // Ctrl-C) leaves no VM running. Its `Vm` must then be started by a thread that lives as
    // long as the VM (the test's own).
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        qemu.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    qemu.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(io(format!(
            "cannot start {program} (packages qemu-system-x86, qemu-system-arm)"
        )))
}

/// Where consoles are kept: `$UNCLOUD_VM_LOGS`, else `uncloud-vm-logs` in the temporary
/// directory.
pub fn logs_dir() -> PathBuf {
    std::env::var_os("UNCLOUD_VM_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("uncloud-vm-logs"))
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Keep what the VM printed: the test's failure message only has the tail.
            if let Ok(path) = self.save_console(&logs_dir()) {
                eprintln!("{}: console saved to {}", self.name, path.display());
            }
        }
    }
}
