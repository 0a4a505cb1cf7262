//! What to boot and how: a QEMU command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metadata::{self, MetadataService};

/// The guest's architecture, and so which QEMU and which firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// UEFI firmware (OVMF on x86_64, AAVMF on arm64) with a fresh copy of its variables.
    Uefi,
    /// Legacy BIOS: SeaBIOS, QEMU's default on x86_64.
    Bios,
    /// Kernel, initrd and device tree handed to QEMU: the Raspberry Pi machine, whose GPU
    /// firmware (which would read config.txt) QEMU cannot run.
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        dtb: Option<PathBuf>,
        cmdline: String,
    },
}

/// Where Debian's packages put the firmware (ovmf, qemu-efi-aarch64).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// One virtual machine to boot.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Names its files and log; unique among the VMs of a test.
    pub name: String,
    pub arch: Arch,
    pub boot: Boot,
    /// QEMU's machine type; default `q35` (UEFI), `pc` (BIOS) or `virt` (arm64).
    pub machine_type: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Each VM its own MAC: QEMU's default is the same for all.
    pub mac: String,
    /// Size the disk grows to (the image's partition and filesystem then grow on boot).
    pub disk_size_bytes: Option<u64>,
    /// A provider: its DMI strings, and its metadata service at 169.254.169.254 (the VM's
    /// network is then [`metadata::NETWORK`]).
    pub metadata: Option<MetadataService>,
    /// TCP ports of the host's loopback forwarded to the guest (`host`, `guest`): how a test
    /// on the host reaches the guest's apid through QEMU's user network.
    pub host_forwards: Vec<(u16, u16)>,
    /// Instead of QEMU's user network: this tap device, which the test made and plugged
    /// into a bridge (several VMs on one Ethernet segment, with their own addresses).
    pub tap: Option<String>,
    /// The network namespace QEMU runs in (where [`Machine::tap`] is).
    pub netns: Option<String>,
    /// A virtio serial port named [`SHELL_PORT`] whose host side is a Unix socket: the test
    /// shell's (see [`crate::shell`]). The guest serves it only if its user-data says so.
    pub shell_port: bool,
    /// A far machine: its NIC holds every frame, both ways, until the next tick of a timer
    /// with this period (QEMU's `filter-buffer`: the test machines' kernel has no netem). A
    /// round trip then takes between one and two periods more. `None`: frames pass at once.
    pub link_delay: Option<Duration>,
}

/// The name of the test shell's port: `/dev/virtio-ports/<this>` in the guest.
pub const SHELL_PORT: &str = "org.uncloud.test-shell";

/// Where a VM's files are, for its command line.
#[derive(Debug, Clone, Copy)]
pub struct VmFiles<'a> {
    /// The (overlay) disk, and its format.
    pub disk: &'a Path,
    pub disk_format: &'a str,
    /// The file the serial console is written to.
    pub console: &'a Path,
    /// The writable UEFI variable store.
    pub vars: Option<&'a Path>,
    /// A seed disk (NoCloud or ConfigDrive).
    pub seed: Option<&'a Path>,
    /// The directory [`Machine::metadata`]'s routes were written to.
    pub metadata_routes: Option<&'a Path>,
    /// The Unix socket QEMU listens on for [`Machine::shell_port`].
    pub shell: Option<&'a Path>,
}

impl Machine {
    /// A VM with 1.5 GiB and 2 CPUs (Docker under TCG wants both).
    pub fn new(name: &str, arch: Arch, boot: Boot) -> Machine {
        // A locally administered MAC derived from the name.
        let h = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        Machine {
            name: name.to_owned(),
            arch,
            boot,
            machine_type: None,
            memory_mib: 1536,
            cpus: 2,
            mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                (h >> 16) as u8,
                (h >> 8) as u8,
                h as u8
            ),
            disk_size_bytes: None,
            metadata: None,
            host_forwards: Vec::new(),
            tap: None,
            netns: None,
            shell_port: false,
            link_delay: None,
        }
    }

    /// The address (with prefix) QEMU's DHCP server gives this VM.
    pub fn guest_address(&self) -> &'static str {
        match self.metadata {
            Some(_) => metadata::GUEST_ADDRESS,
            None => "10.0.2.15/24",
        }
    }

    pub fn program(&self) -> &'static str {
        match self.arch {
            Arch::Amd64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// Firmware code and variable template for [`Boot::Uefi`].
    pub fn uefi_firmware(&self) -> (&'static str, &'static str) {
        match self.arch {
            Arch::Amd64 => (OVMF_CODE, OVMF_VARS),
            Arch::Arm64 => (AAVMF_CODE, AAVMF_VARS),
        }
    }

    /// The size the VM's disk is given: [`Machine::disk_size_bytes`], else the image's own,
    /// rounded up to a power of two on the Raspberry Pi machine (QEMU's SD card accepts no
    /// other size; the image is not padded, so it fits the smallest card it can).
    pub fn disk_size(&self, image_bytes: u64) -> Option<u64> {
        match self.disk_size_bytes {
            Some(size) => Some(size),
            None if self.is_raspi() => Some(image_bytes.next_power_of_two()),
            None => None,
        }
    }

    fn is_raspi(&self) -> bool {
        self.machine_type
            .as_deref()
            .is_some_and(|m| m.starts_with("raspi"))
    }

    /// QEMU's arguments, with the VM's files at `files`.
    pub fn args(&self, files: &VmFiles) -> Vec<String> {
        let VmFiles {
            disk,
            disk_format,
            console,
            vars,
            seed,
            metadata_routes,
            shell,
        } = *files;
        let machine = self.machine_type.clone().unwrap_or_else(|| {
            match (self.arch, &self.boot) {
                (Arch::Amd64, Boot::Bios) => "pc",
                (Arch::Amd64, _) => "q35",
                (Arch::Arm64, _) => "virt",
            }
            .to_owned()
        });
        let mut a: Vec<String> = vec!["-machine".into(), machine];
        a.extend(["-accel".into(), "tcg,tb-size=256".into()]);
        match self.arch {
            // Baseline x86-64: what the workspace is built for, and what every VPS has.
            Arch::Amd64 => a.extend(["-cpu".into(), "qemu64".into()]),
            Arch::Arm64 if !self.is_raspi() => a.extend(["-cpu".into(), "cortex-a72".into()]),
            Arch::Arm64 => {}
        }
        if !self.is_raspi() {
            // The Raspberry Pi machine has fixed memory and CPUs.
            a.extend(["-m".into(), self.memory_mib.to_string()]);
            a.extend(["-smp".into(), self.cpus.to_string()]);
        }
        a.extend(["-nographic".into(), "-monitor".into(), "none".into()]);
        if self.is_raspi() {
            // The Pi's PL011 (QEMU's first serial port) belongs to Bluetooth; the console on
            // GPIO 14/15 is the mini UART, QEMU's second (ttyS1 in the guest).
            a.extend(["-serial".into(), "null".into()]);
        }
        // Appended to, not truncated: a VM powered on again keeps one console log.
        a.extend([
            "-chardev".into(),
            format!("file,id=console,path={},append=on", console.display()),
            "-serial".into(),
            "chardev:console".into(),
        ]);
        match &self.boot {
            Boot::Uefi => {
                let (code, _) = self.uefi_firmware();
                a.extend([
                    "-drive".into(),
                    format!("if=pflash,format=raw,readonly=on,file={code}"),
                ]);
                if let Some(vars) = vars {
                    a.extend([
                        "-drive".into(),
                        format!("if=pflash,format=raw,file={}", vars.display()),
                    ]);
                }
            }
            Boot::Bios => {}
            Boot::Direct {
                kernel,
                initrd,
                dtb,
                cmdline,
            } => {
                a.extend(["-kernel".into(), kernel.display().to_string()]);
                a.extend(["-initrd".into(), initrd.display().to_string()]);
                if let Some(dtb) = dtb {
                    a.extend(["-dtb".into(), dtb.display().to_string()]);
                }
                a.extend(["-append".into(), cmdline.clone()]);
            }
        }
        if self.is_raspi() {
            a.extend([
                "-drive".into(),
                format!("file={},if=sd,format={disk_format}", disk.display()),
                "-usb".into(),
                "-device".into(),
                format!("usb-net,netdev=n0,mac={}", self.mac),
            ]);
        } else {
            a.extend([
                "-drive".into(),
                // `writeback` (QEMU's default): what the guest flushes is written to the host
                // file, so killing QEMU keeps every flushed write, as a power cut does
                // (`unsafe` would drop flushes). It loses the guest's page cache, as a power
                // cut does, though writes QEMU passed on unflushed survive in the host's.
                format!(
                    "file={},if=virtio,format={disk_format},cache=writeback",
                    disk.display()
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={}", self.mac),
                // Entropy from the host, as VPSes give it: `-cpu qemu64` has no RDRAND, and
                // the kernel's jitter entropy under TCG can stall the first read of
                // /dev/urandom for minutes.
                "-device".into(),
                "virtio-rng-pci".into(),
            ]);
            if let Some(seed) = seed {
                a.extend([
                    "-drive".into(),
                    format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
                ]);
            }
            if let (true, Some(shell)) = (self.shell_port, shell) {
                a.extend([
                    "-device".into(),
                    "virtio-serial-pci".into(),
                    "-chardev".into(),
                    format!(
                        "socket,id=shell,path={},server=on,wait=off",
                        shell.display()
                    ),
                    "-device".into(),
                    format!("virtserialport,chardev=shell,name={SHELL_PORT}"),
                ]);
            }
        }
        let mut netdev = match (&self.metadata, metadata_routes) {
            _ if self.tap.is_some() => format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                self.tap.as_deref().unwrap_or_default()
            ),
            (Some(service), Some(routes)) => {
                a.extend(["-smbios".into(), service.smbios.clone()]);
                format!("user,id=n0,{}", service.netdev_options(routes))
            }
            _ => "user,id=n0".into(),
        };
        for (host, guest) in &self.host_forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        a.extend(["-netdev".into(), netdev]);
        if let Some(period) = self.link_delay {
            a.extend([
                "-object".into(),
                format!(
                    "filter-buffer,id=n0-delay,netdev=n0,queue=all,interval={}",
                    period.as_micros().max(1)
                ),
            ]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files<'a>(vars: Option<&'a Path>, seed: Option<&'a Path>) -> VmFiles<'a> {
        VmFiles {
            disk: Path::new("/d.qcow2"),
            disk_format: "qcow2",
            console: Path::new("/c.log"),
            vars,
            seed,
            metadata_routes: Some(Path::new("/routes")),
            shell: Some(Path::new("/shell.sock")),
        }
    }

    fn joined(m: &Machine, vars: Option<&Path>) -> String {
        m.args(&files(vars, Some(Path::new("/seed.img")))).join(" ")
    }

    #[test]
    fn uefi_x86_uses_q35_ovmf_and_its_own_variables() {
        let m = Machine::new("a", Arch::Amd64, Boot::Uefi);
        let args = joined(&m, Some(Path::new("/vars.fd")));
        assert!(args.starts_with("-machine q35 -accel tcg"), "{args}");
        assert!(
            args.contains(&format!("readonly=on,file={OVMF_CODE}")),
            "{args}"
        );
        assert!(
            args.contains("if=pflash,format=raw,file=/vars.fd"),
            "{args}"
        );
        assert!(
            args.contains("-chardev file,id=console,path=/c.log,append=on -serial chardev:console"),
            "{args}"
        );
        assert!(args.contains("cache=writeback"), "{args}");
        assert!(
            !args.contains("virtserialport"),
            "no shell unless asked: {args}"
        );
        assert!(args.contains("virtio-rng-pci"), "{args}");
        assert!(
            args.contains("file=/seed.img,if=virtio,format=raw,readonly=on"),
            "{args}"
        );
    }

    #[test]
    fn bios_x86_has_no_pflash_and_arm64_uses_virt_with_aavmf() {
        let bios = joined(&Machine::new("b", Arch::Amd64, Boot::Bios), None);
        assert!(bios.starts_with("-machine pc "), "{bios}");
        assert!(!bios.contains("pflash"), "{bios}");
        let arm = joined(
            &Machine::new("c", Arch::Arm64, Boot::Uefi),
            Some(Path::new("/v")),
        );
        assert!(
            arm.starts_with("-machine virt -accel tcg,tb-size=256 -cpu cortex-a72"),
            "{arm}"
        );
        assert!(arm.contains(AAVMF_CODE), "{arm}");
    }

    #[test]
    fn raspi_boots_directly_from_an_sd_card_with_usb_network() {
        let mut m = Machine::new(
            "pi",
            Arch::Arm64,
            Boot::Direct {
                kernel: "/k".into(),
                initrd: "/i".into(),
                dtb: Some("/d.dtb".into()),
                cmdline: "console=ttyAMA0".into(),
            },
        );
        m.machine_type = Some("raspi3b".into());
        let args = m.args(&VmFiles {
            disk: Path::new("/sd.img"),
            disk_format: "raw",
            console: Path::new("/c"),
            ..files(None, None)
        });
        let joined = args.join(" ");
        assert!(
            joined.contains("-kernel /k -initrd /i -dtb /d.dtb"),
            "{joined}"
        );
        assert!(joined.contains("file=/sd.img,if=sd,format=raw"), "{joined}");
        assert!(joined.contains("usb-net"), "{joined}");
        assert!(
            joined.contains(
                "-serial null -chardev file,id=console,path=/c,append=on -serial chardev:console"
            ),
            "the console is the mini UART: {joined}"
        );
        assert!(!joined.contains("-m "), "{joined}");
        // The command line stays one argument.
        assert!(args.contains(&"console=ttyAMA0".to_string()));
    }

    #[test]
    fn a_provider_vm_gets_its_dmi_strings_and_a_network_with_the_metadata_service() {
        let plain = Machine::new("p", Arch::Amd64, Boot::Uefi);
        let args = joined(&plain, None);
        assert!(args.ends_with("-netdev user,id=n0"), "{args}");
        assert!(!args.contains("-smbios"), "{args}");
        assert_eq!(plain.guest_address(), "10.0.2.15/24");
        let mut vps = plain.clone();
        let hetzner = metadata::Hetzner {
            server_id: 7,
            hostname: "h".into(),
            user_data: String::new(),
        };
        vps.metadata = Some(hetzner.service(Path::new("/resp"), &vps.mac));
        let args = joined(&vps, None);
        assert!(
            args.contains("-smbios type=1,manufacturer=Hetzner,product=vServer,serial=7"),
            "{args}"
        );
        assert!(
            args.contains("-netdev user,id=n0,net=169.0.0.0/8,")
                && args.ends_with("-cmd:/resp /routes"),
            "{args}"
        );
        assert_eq!(vps.guest_address(), "169.0.0.15/8");
    }

    #[test]
    fn sd_cards_are_a_power_of_two_and_other_disks_their_image() {
        let mut pi = Machine::new("pi", Arch::Arm64, Boot::Bios);
        pi.machine_type = Some("raspi3b".into());
        assert_eq!(pi.disk_size(1405 << 20), Some(2048 << 20));
        assert_eq!(pi.disk_size(2048 << 20), Some(2048 << 20));
        let vm = Machine::new("vm", Arch::Amd64, Boot::Uefi);
        assert_eq!(vm.disk_size(1405 << 20), None);
        pi.disk_size_bytes = Some(8 << 30);
        assert_eq!(pi.disk_size(1405 << 20), Some(8 << 30));
    }

    #[test]
    fn forwarded_ports_listen_on_the_hosts_loopback_only() {
        let mut m = Machine::new("fw", Arch::Amd64, Boot::Bios);
        m.host_forwards = vec![(17443, 7443)];
        let line = joined(&m, None);
        assert!(
            line.contains("-netdev user,id=n0,hostfwd=tcp:127.0.0.1:17443-:7443"),
            "{line}"
        );
    }

    #[test]
    fn a_vm_on_a_tap_uses_it_instead_of_the_user_network() {
        let mut m = Machine::new("t", Arch::Amd64, Boot::Uefi);
        m.tap = Some("ucvm0".into());
        let line = joined(&m, None);
        assert!(
            line.contains("-netdev tap,id=n0,ifname=ucvm0,script=no,downscript=no"),
            "{line}"
        );
        assert!(!line.contains("user,id=n0"), "{line}");
    }

    #[test]
    fn a_link_delay_buffers_both_ways_of_the_nic_for_its_period() {
        let mut m = Machine::new("far", Arch::Amd64, Boot::Uefi);
        assert!(!joined(&m, None).contains("filter-buffer"));
        m.link_delay = Some(Duration::from_millis(40));
        let line = joined(&m, None);
        assert!(
            line.ends_with("-object filter-buffer,id=n0-delay,netdev=n0,queue=all,interval=40000"),
            "{line}"
        );
    }

    #[test]
    fn a_shell_port_is_a_named_virtio_serial_port_on_a_unix_socket() {
        let mut m = Machine::new("s", Arch::Amd64, Boot::Uefi);
        m.shell_port = true;
        let line = joined(&m, None);
        assert!(
            line.contains(
                "-device virtio-serial-pci -chardev socket,id=shell,path=/shell.sock,server=on,wait=off \
                 -device virtserialport,chardev=shell,name=org.uncloud.test-shell"
            ),
            "{line}"
        );
    }

    #[test]
    fn macs_differ_between_vms_and_are_locally_administered() {
        let a = Machine::new("vm-a", Arch::Amd64, Boot::Uefi).mac;
        let b = Machine::new("vm-b", Arch::Amd64, Boot::Uefi).mac;
        assert_ne!(a, b);
        assert!(a.starts_with("52:54:00:"));
    }
}
