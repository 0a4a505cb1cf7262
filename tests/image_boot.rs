//! The images boot under QEMU (TCG) to a ready Uncloud machine.
//!
//! Each test boots one image with its real firmware and waits for the console banner that
//! `uncloud-banner.service` prints once every Uncloud unit and Docker have started. They
//! need the images (`image/build`) and are run by `scripts/test` with `--ignored`. The other
//! boots are machines of the network story (`image_network.rs`): amd64 UEFI with a NoCloud
//! seed (alpha, bravo, charlie, echo), amd64 BIOS with a config drive and a join ticket
//! (delta), arm64 UEFI on Hetzner's metadata service (foxtrot).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use uncloud_e2e::{cloud_init_warnings, image, is_status_line, write_raw_image, Banner};
use uncloud_qemu::{rpi, Arch, Machine, SeedDisk, Vm};

/// Under TCG on 2 cores, x86_64 is ready in about a minute and arm64 in a few; this bounds a
/// hung boot, not a slow one.
const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// The units every image must have active once booted.
const UNITS: &[&str] = &[
    "stated.service",
    "meshd.service",
    "dnsd.service",
    "ingressd.service",
    "dockerd-shim.service",
    "docker.service",
];

/// Boots until the console banner and checks it: ready, every unit active, the DHCP address,
/// no cloud-init warning, multi-user reached.
fn boot_until_ready(machine: &Machine, image: &Path, seed: Option<&SeedDisk>) -> (Vm, Banner) {
    let (mut vm, banner, console) = boot_until_banner(machine, image, seed);
    check_ready(machine, &mut vm, &banner, &console);
    (vm, banner)
}

/// Boots until the console banner; returns it with the console then.
fn boot_until_banner(
    machine: &Machine,
    image: &Path,
    seed: Option<&SeedDisk>,
) -> (Vm, Banner, String) {
    let mut vm = Vm::start(machine, image, seed).unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line("the console banner", READY_TIMEOUT, is_status_line)
        .unwrap_or_else(|e| panic!("{e}"));
    // The banner's lines follow its first one; give them a moment to reach the console.
    std::thread::sleep(Duration::from_secs(2));
    let console = vm.console();
    // Kept for reading where a boot spends its time, failed or not.
    let _ = vm.save_console(&uncloud_qemu::vm::logs_dir());
    let banner = Banner::parse_last(&console).expect("a banner was seen");
    eprintln!(
        "{}: banner after {:.0?}: {banner:?}",
        machine.name,
        vm.elapsed()
    );
    (vm, banner, console)
}

fn check_ready(machine: &Machine, vm: &mut Vm, banner: &Banner, console: &str) {
    assert!(banner.ready, "not ready: {}\n{console}", banner.status);
    for unit in UNITS {
        assert_eq!(banner.unit(unit), Some("active"), "{unit} in {banner:?}");
    }
    // QEMU's user network hands out one address by DHCP: the network came up.
    assert!(
        banner
            .addresses
            .as_deref()
            .is_some_and(|a| a.contains(machine.guest_address())),
        "no DHCP address {}: {banner:?}",
        machine.guest_address()
    );
    // cloud-init (when a datasource was found) took our settings and the user-data without
    // complaint: it logs schema errors and ignored keys as warnings on the console.
    let warnings = cloud_init_warnings(console);
    assert!(
        warnings.is_empty(),
        "cloud-init warned:\n{}",
        warnings.join("\n")
    );
    // Reached multi-user: systemd says so on the console.
    vm.wait_for_line("multi-user.target", Duration::from_secs(120), |l| {
        l.contains("Reached target") && l.contains("multi-user.target")
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The Raspberry Pi SD image's boot partition holds what the Pi firmware reads.
#[test]
#[ignore = "reads the Raspberry Pi image: run image/build, then cargo test -p uncloud-e2e -- --ignored"]
fn rpi_boot_partition_has_what_the_firmware_needs() {
    let scratch = tempfile_dir();
    let dir = scratch.path();
    let img = dir.join("rpi.img");
    write_raw_image("-arm64-rpi.img", &img);
    // MBR: partition 1 FAT32 (LBA) from 4 MiB, partition 2 Linux.
    let table = run("sfdisk", &["--dump", img.to_str().unwrap()]);
    assert!(table.contains("label: dos"), "{table}");
    let parts: Vec<&str> = table.lines().filter(|l| l.contains(" : start=")).collect();
    assert_eq!(parts.len(), 2, "{table}");
    assert!(
        parts[0].contains("start=        8192") && parts[0].contains("type=c"),
        "{table}"
    );
    assert!(parts[1].contains("type=83"), "{table}");
    // Not padded: the image fits a 2 GB card.
    let size = std::fs::metadata(&img).unwrap().len();
    assert!(size < 2_000_000_000, "SD image of {size} bytes");
    let fat = format!("{}@@4M", img.display());
    let files = run("mdir", &["-b", "-i", &fat, "::/"]);
    for needed in [
        "start4.elf",
        "fixup4.dat",
        "config.txt",
        "cmdline.txt",
        "bcm2711-rpi-4-b.dtb",
        "bcm2711-rpi-400.dtb",
        "uncloud-setup.toml",
    ] {
        assert!(
            files.contains(&format!("::/{needed}")),
            "{needed} missing from:\n{files}"
        );
    }
    let config = run("mtype", &["-i", &fat, "::/config.txt"]);
    assert!(config.contains("arm_64bit=1"), "{config}");
    // config.txt names a kernel and an initramfs that exist on the partition.
    let (kernel, initrd) = rpi::kernel_and_initrd(&img, &config).unwrap();
    for f in [kernel, initrd] {
        assert!(
            files.contains(&format!("::/{f}")),
            "{f} named in config.txt is missing"
        );
    }
    let cmdline = run("mtype", &["-i", &fat, "::/cmdline.txt"]);
    assert!(cmdline.contains("root=LABEL=rootfs"), "{cmdline}");
    assert_eq!(cmdline.lines().count(), 1, "cmdline.txt is one line");
    let setup = run("mtype", &["-i", &fat, "::/uncloud-setup.toml"]);
    assert!(
        setup.contains("setup_token") && setup.contains("join_ticket"),
        "{setup}"
    );
    let label = run("mlabel", &["-s", "-i", &fat, "::"]);
    assert!(label.contains("RASPIFIRM"), "{label}");
    let _ = std::fs::remove_file(&img);
}

/// The Raspberry Pi image boots on QEMU's Raspberry Pi 3 machine, takes the hostname and
/// setup token the user wrote into `uncloud-setup.toml` on the card's boot partition, and
/// leaves no secret on the card. QEMU cannot run the Pi's GPU firmware, so the kernel, initrd
/// and device tree that `config.txt` names are handed to QEMU with `cmdline.txt` as shipped
/// (`uncloud_qemu::rpi`).
#[test]
#[ignore = "boots the Raspberry Pi image in QEMU: run image/build, then cargo test -p uncloud-e2e -- --ignored"]
fn rpi_image_boots_on_qemus_raspberry_pi_and_takes_its_setup_file() {
    let scratch = tempfile_dir();
    let dir = scratch.path();
    let img = dir.join("rpi-boot.img");
    write_raw_image("-arm64-rpi.img", &img);
    // What the user does on a laptop before the first boot.
    let token = "e2e-pi-token-0123456789";
    let setup = dir.join("uncloud-setup.toml");
    std::fs::write(
        &setup,
        format!("# mine\nhostname = \"e2e-pi\"\nsetup_token = \"{token}\"\n"),
    )
    .unwrap();
    rpi::write_boot_file(&img, "uncloud-setup.toml", &setup).unwrap_or_else(|e| panic!("{e}"));
    let boot = rpi::direct_boot(&img, dir, "").unwrap_or_else(|e| panic!("{e}"));
    let mut machine = Machine::new("rpi3b", Arch::Arm64, boot);
    machine.machine_type = Some("raspi3b".into());
    let (mut vm, banner, console) = boot_until_banner(&machine, &img, None);
    let (mut vm, banner) = if rpi::usb_network_missing(&console) {
        // The emulator's failure, not the image's: the next boot finds the device.
        eprintln!("rpi3b: QEMU's USB controller did not enumerate the network device; once more");
        drop(vm);
        boot_until_ready(&machine, &img, None)
    } else {
        check_ready(&machine, &mut vm, &banner, &console);
        (vm, banner)
    };
    assert_eq!(banner.hostname, "e2e-pi", "the setup file's hostname");
    assert_eq!(
        banner.setup_token.as_deref(),
        Some(token),
        "the setup file's token"
    );
    assert!(
        vm.console()
            .lines()
            .any(|l| l.contains("growroot: CHANGED")),
        "the root partition grew to the rest of the (power-of-two) SD card"
    );
    let after = dir.join("rpi-after.img");
    vm.stop_and_save_disk(&after)
        .unwrap_or_else(|e| panic!("{e}"));
    let left = rpi::read_boot_file(&after, "uncloud-setup.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !left.contains(token),
        "the token is still on the card:\n{left}"
    );
    assert!(
        left.contains("# mine\nhostname = \"e2e-pi\""),
        "the rest of the file is kept:\n{left}"
    );
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(&after);
}

/// Each image's manifest lists every daemon's package and the right hash and size of each
/// file it describes.
#[test]
#[ignore = "reads the built images: run image/build, then cargo test -p uncloud-e2e -- --ignored"]
fn manifests_list_every_daemon_and_the_hashes_of_the_files() {
    let services = uncloud_e2e::workspace().join("services");
    let daemons: Vec<String> = std::fs::read_dir(&services)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("dist").is_dir())
        .map(|p| format!("uncloud-{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert!(daemons.len() >= 4, "{daemons:?}");
    for suffix in [
        "-amd64.manifest.json",
        "-arm64.manifest.json",
        "-arm64-rpi.manifest.json",
    ] {
        let path = image(suffix);
        let text = std::fs::read_to_string(&path).unwrap();
        for d in daemons.iter().map(String::as_str).chain([
            "uncloud",
            "uncloud-daemons",
            "docker.io",
            "cloud-init",
        ]) {
            assert!(
                text.contains(&format!("\"package\": \"{d}\"")),
                "{} does not list {d}",
                path.display()
            );
        }
        for (file, sha) in manifest_files(&text) {
            let file = path.parent().unwrap().join(&file);
            let sum = run("sha256sum", &[file.to_str().unwrap()]);
            assert_eq!(
                sum.split_whitespace().next(),
                Some(sha.as_str()),
                "{}",
                file.display()
            );
        }
    }
}

/// `(file, sha256)` of each entry of a manifest's `files`.
fn manifest_files(text: &str) -> Vec<(String, String)> {
    let manifest: serde_json::Value = serde_json::from_str(text).expect("the manifest is JSON");
    let files: Vec<(String, String)> = manifest["files"]
        .as_array()
        .expect("a files array")
        .iter()
        .map(|f| {
            (
                f["file"].as_str().expect("file").to_owned(),
                f["sha256"].as_str().expect("sha256").to_owned(),
            )
        })
        .collect();
    assert!(!files.is_empty(), "no files in the manifest");
    files
}

/// A scratch directory for decompressed images (over 1.5 GiB each), removed when the test
/// ends, passed or failed: left behind, a few runs filled the disk.
fn tempfile_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("uncloud-e2e-")
        .tempdir()
        .unwrap()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
