//! The image benchmark (binary `image-bench`): how long each image takes under QEMU TCG from
//! power-on to a ready Uncloud machine (the console banner saying every Uncloud unit and
//! Docker are active), beside the same image booted with Uncloud's units and Docker masked on
//! the kernel command line (plain Debian 12 on the same firmware, boot loader and kernel, to
//! multi-user). The ratio is what Uncloud adds to a boot. Also the compressed x86_64 image's
//! size against its 150 MB target.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use uncloud_qemu::{Arch, Boot, Machine, Vm};

use crate::progress;
use crate::report::{line, write_json, Metric, Results};
use crate::sys::Machine as Host;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Architectures to boot (amd64 with UEFI and with BIOS, arm64 with UEFI).
    pub arm64: bool,
    pub bios: bool,
    /// Boots of each kind (Uncloud, reference); the median is reported.
    pub runs: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            arm64: true,
            bios: true,
            runs: 2,
        }
    }

    /// One amd64 UEFI boot of each kind, for a smoke run.
    pub fn quick() -> Plan {
        Plan {
            arm64: false,
            bios: false,
            runs: 1,
        }
    }
}

/// Units masked for the reference boot: everything Uncloud adds to Debian.
const MASKED: &[&str] = &[
    "stated.service",
    "meshd.service",
    "dockerd-shim.service",
    "uncloud-firstboot.service",
    "uncloud-banner.service",
    "docker.service",
    "docker.socket",
    "containerd.service",
];

/// A boot that hangs is cut off after this.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// The compressed x86_64 image must stay under this (MB = 10^6 bytes).
const SIZE_TARGET_MB: f64 = 150.0;

pub fn run_bench(plan: &Plan, images: &Path, out: &Path, command: &str) -> Result<Results> {
    let mut results = Results::new();
    let work = tempfile::Builder::new()
        .prefix("uncloud-image-bench-")
        .tempdir()?;
    let mut cases = vec![("amd64_uefi", Arch::Amd64, Boot::Uefi, "-amd64.qcow2")];
    if plan.bios {
        cases.push(("amd64_bios", Arch::Amd64, Boot::Bios, "-amd64.qcow2"));
    }
    if plan.arm64 {
        cases.push(("arm64_uefi", Arch::Arm64, Boot::Uefi, "-arm64.qcow2"));
    }
    for (name, arch, boot, suffix) in cases {
        let image = find_image(images, suffix)?;
        // A raw copy whose boot entries can be edited for the reference boot.
        let raw = work.path().join(format!("{name}.raw"));
        let plain = work.path().join(format!("{name}-plain.raw"));
        if !raw.exists() {
            convert_to_raw(&image, &raw)?;
        }
        std::fs::copy(&raw, &plain)?;
        mask_units(&plain, arch)?;
        let mut uncloud = Vec::new();
        let mut reference = Vec::new();
        for run in 0..plan.runs {
            let machine = Machine::new(&format!("bench-{name}-{run}"), arch, boot.clone());
            let t = boot_to(&machine, &raw, "the ready banner", |l| {
                l.starts_with("uncloud: ") && l.ends_with(" ready")
            })?;
            progress(format!("{name} run {run}: Uncloud ready after {t:.1} s"));
            uncloud.push(t);
            let machine = Machine::new(&format!("bench-{name}-plain-{run}"), arch, boot.clone());
            let t = boot_to(&machine, &plain, "multi-user.target", |l| {
                l.contains("Reached target") && l.contains("multi-user.target")
            })?;
            progress(format!(
                "{name} run {run}: plain Debian multi-user after {t:.1} s"
            ));
            reference.push(t);
        }
        results.insert(
            format!("boot_to_ready_{name}"),
            Metric::new(median(&mut uncloud), median(&mut reference), "s"),
        );
        let _ = std::fs::remove_file(&plain);
    }
    let xz = find_image(images, "-amd64.raw.xz")?;
    let mb = std::fs::metadata(&xz)?.len() as f64 / 1e6;
    results.insert(
        "size_amd64_raw_xz".into(),
        Metric::new(mb, SIZE_TARGET_MB, "MB"),
    );
    std::fs::create_dir_all(out)?;
    write_json(&out.join("image.json"), &results)?;
    std::fs::write(
        out.join("image.md"),
        markdown(plan, images, &results, command)?,
    )?;
    Ok(results)
}

/// Seconds from starting QEMU to the first console line `matches` accepts.
fn boot_to(
    machine: &Machine,
    image: &Path,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<f64> {
    let mut vm = Vm::start(machine, image, None)?;
    vm.wait_for_line(what, BOOT_TIMEOUT, matches)?;
    Ok(vm.elapsed().as_secs_f64())
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn find_image(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("images in {}: run image/build first", dir.display()))?
    {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no *{suffix} in {}: run image/build first", dir.display()),
        _ => bail!("several *{suffix} in {}: {found:?}", dir.display()),
    }
}

fn convert_to_raw(image: &Path, raw: &Path) -> Result<()> {
    crate::sys::run(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(raw),
    )
    .with_context(|| format!("converting {} to raw", image.display()))?;
    Ok(())
}

/// Adds `systemd.mask=` for every Uncloud and Docker unit to the image's boot entries: the
/// systemd-boot entry (UEFI) and, on x86_64, SYSLINUX's (BIOS). The ESP starts at 1 MiB.
fn mask_units(raw: &Path, arch: Arch) -> Result<()> {
    let masks: String = MASKED
        .iter()
        .map(|u| format!(" systemd.mask={u}"))
        .collect();
    let fat = format!("{}@@1M", raw.display());
    let mut files = vec![("/loader/entries/uncloud.conf", "options ")];
    if arch == Arch::Amd64 {
        files.push(("/syslinux.cfg", "  APPEND "));
    }
    for (file, prefix) in files {
        let text = mtools(
            Command::new("mtype")
                .arg("-i")
                .arg(&fat)
                .arg(format!("::{file}")),
        )?;
        if !text.lines().any(|l| l.starts_with(prefix)) {
            bail!(
                "{file} in {} has no line starting {prefix:?}",
                raw.display()
            );
        }
        let edited: String = text
            .lines()
            .map(|l| {
                if l.starts_with(prefix) {
                    format!("{l}{masks}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let tmp = raw.with_extension("entry");
        std::fs::write(&tmp, edited)?;
        mtools(
            Command::new("mcopy")
                .args(["-o", "-i"])
                .arg(&fat)
                .arg(&tmp)
                .arg(format!("::{file}")),
        )?;
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(())
}

fn mtools(cmd: &mut Command) -> Result<String> {
    crate::sys::run(cmd.env("MTOOLS_SKIP_CHECK", "1"))
}

fn markdown(plan: &Plan, images: &Path, results: &Results, command: &str) -> Result<String> {
    let host = Host::describe(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
    let mut md = String::new();
    line(
        &mut md,
        "# Image benchmark: boot to ready under QEMU TCG, and size\n",
    );
    line(
        &mut md,
        format!(
            "Command: `{command}` (images from `{}`)\n",
            images.display()
        ),
    );
    line(
        &mut md,
        "Each image boots from its real firmware (OVMF or SeaBIOS, AAVMF), boot loader and kernel \
         under QEMU with TCG (no KVM here), 2 vCPUs and 1.5 GiB (`-cpu qemu64` on x86_64, \
         `cortex-a72` on arm64). **value**: seconds from starting QEMU to the console banner \
         `uncloud: <host> ready`, printed once stated, meshd, dockerd-shim and Docker are active. \
         **reference**: the same image with those units (and the first-boot ones) masked on the \
         kernel command line, to systemd's `Reached target multi-user.target`: plain Debian 12 on \
         the same firmware and kernel. The ratio is what Uncloud and Docker add to a boot under \
         emulation; on real hardware or KVM every figure is several times smaller.\n",
    );
    line(
        &mut md,
        format!("Runs per figure: {} (median).\n", plan.runs),
    );
    line(
        &mut md,
        "| metric | value | reference | ratio | unit |\n|---|---:|---:|---:|---|",
    );
    for (name, m) in results {
        line(
            &mut md,
            format!(
                "| {name} | {} | {} | {:.3} | {} |",
                crate::report::fmt_num(m.value),
                crate::report::fmt_num(m.reference),
                m.ratio,
                m.unit
            ),
        );
    }
    line(
        &mut md,
        format!(
            "\n`size_amd64_raw_xz`'s reference is the target, {SIZE_TARGET_MB} MB (not a measured run).\n"
        ),
    );
    line(&mut md, "Image files:\n");
    let mut files: Vec<_> = std::fs::read_dir(images)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.to_string_lossy().ends_with(".json"))
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::metadata(&f)?.len();
        line(
            &mut md,
            format!(
                "- `{}`: {:.1} MB",
                f.file_name().unwrap().to_string_lossy(),
                bytes as f64 / 1e6
            ),
        );
    }
    line(&mut md, "\nMachine:\n");
    md.push_str(&host.markdown_list());
    Ok(md)
}
