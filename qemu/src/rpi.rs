//! The Raspberry Pi SD image as QEMU's `raspi3b` boots it. QEMU cannot run the Pi's GPU
//! firmware, which would read `config.txt` and load the kernel, so this does the firmware's
//! part: it reads `config.txt` and `cmdline.txt` from the card's FAT boot partition and hands
//! the kernel, initrd and device tree they name to QEMU.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::machine::Boot;
use crate::tool::{run, ToolError};

/// Where the boot partition starts in the SD image (the Pi convention), as mtools writes it.
const BOOT_OFFSET: &str = "@@4M";
/// The device tree of the Pi QEMU emulates.
pub const RASPI3B_DTB: &str = "bcm2837-rpi-3-b.dtb";

#[derive(Debug, thiserror::Error)]
pub enum RpiError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("config.txt on {image} has no {what} line")]
    Config { image: PathBuf, what: &'static str },
}

/// The text of `name` (such as `config.txt`) on the image's boot partition.
pub fn read_boot_file(image: &Path, name: &str) -> Result<String, RpiError> {
    Ok(run(Command::new("mtype")
        .arg("-i")
        .arg(fat(image))
        .arg(format!("::/{name}")))?)
}

/// Copies `from` onto the boot partition as `name`, replacing it: what a user does with the
/// card on another computer.
pub fn write_boot_file(image: &Path, name: &str, from: &Path) -> Result<(), RpiError> {
    run(Command::new("mcopy")
        .args(["-o", "-i"])
        .arg(fat(image))
        .arg(from)
        .arg(format!("::/{name}")))?;
    Ok(())
}

/// The kernel and initramfs that `config.txt` names.
pub fn kernel_and_initrd(image: &Path, config: &str) -> Result<(String, String), RpiError> {
    let missing = |what| RpiError::Config {
        image: image.to_owned(),
        what,
    };
    let kernel = config
        .lines()
        .find_map(|l| l.strip_prefix("kernel="))
        .ok_or_else(|| missing("kernel="))?;
    let initrd = config
        .lines()
        .find_map(|l| l.strip_prefix("initramfs "))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| missing("initramfs"))?;
    Ok((kernel.trim().to_owned(), initrd.to_owned()))
}

/// Takes the kernel, initrd and `raspi3b` device tree off the image into `dir` and returns
/// the direct boot with `cmdline.txt`'s command line plus `extra_cmdline`.
pub fn direct_boot(image: &Path, dir: &Path, extra_cmdline: &str) -> Result<Boot, RpiError> {
    let config = read_boot_file(image, "config.txt")?;
    let (kernel, initrd) = kernel_and_initrd(image, &config)?;
    let mut paths = Vec::new();
    for (name, to) in [
        (kernel.as_str(), "kernel"),
        (initrd.as_str(), "initrd"),
        (RASPI3B_DTB, "dtb"),
    ] {
        let path = dir.join(to);
        run(Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(fat(image))
            .arg(format!("::/{name}"))
            .arg(&path))?;
        paths.push(path);
    }
    let mut cmdline = read_boot_file(image, "cmdline.txt")?.trim().to_owned();
    if !extra_cmdline.is_empty() {
        cmdline = format!("{cmdline} {extra_cmdline}");
    }
    let [kernel, initrd, dtb] = <[PathBuf; 3]>::try_from(paths).expect("three files");
    Ok(Boot::Direct {
        kernel,
        initrd,
        dtb: Some(dtb),
        cmdline,
    })
}

fn fat(image: &Path) -> String {
    format!("{}{BOOT_OFFSET}", image.display())
}

/// Whether QEMU's emulated USB controller (dwc2) failed to enumerate the Pi's USB network
/// device (behind QEMU's USB hub) on this boot: the kernel power-cycled a port and never
/// found the device. It happens now and then under TCG on a loaded host, and the same image
/// finds the device on the next boot, so it is the emulator's failure rather than the image's.
pub fn usb_network_missing(console: &str) -> bool {
    console.contains(": attempt power cycle")
        && !console.contains("Product: RNDIS/QEMU USB Network Device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usb_network_device_given_up_on_is_told_from_one_found_after_a_retry() {
        let failed = "usb 1-1: new full-speed USB device number 4 using dwc2\n\
                      usb usb1-port1: attempt power cycle\n\
                      usb 1-1: new full-speed USB device number 5 using dwc2\n";
        assert!(usb_network_missing(failed));
        let found = format!("{failed}usb 1-1.1: Product: RNDIS/QEMU USB Network Device\n");
        assert!(!usb_network_missing(&found));
        // A boot without a power cycle is judged by the test, not retried.
        assert!(!usb_network_missing("usb 1-1: Product: QEMU USB Hub\n"));
    }

    #[test]
    fn config_txt_names_the_kernel_and_initramfs() {
        let config = "arm_64bit=1\nkernel=vmlinuz-6.1.0-57-arm64\ninitramfs initrd.img-6.1.0-57-arm64 followkernel\n";
        assert_eq!(
            kernel_and_initrd(Path::new("sd.img"), config).unwrap(),
            (
                "vmlinuz-6.1.0-57-arm64".to_owned(),
                "initrd.img-6.1.0-57-arm64".to_owned()
            )
        );
        let e = kernel_and_initrd(Path::new("sd.img"), "arm_64bit=1\n").unwrap_err();
        assert!(e.to_string().contains("kernel="), "{e}");
    }
}
