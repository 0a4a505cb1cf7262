//! QEMU harness of Uncloud's image tests.
//!
//! # Background
//! The appliance image is tested the way it is used: booted whole, with its real firmware
//! (OVMF or SeaBIOS on x86_64, AAVMF on arm64), its own boot loader, kernel and units. These
//! machines have no usable KVM (qemu/README.md), so QEMU runs with TCG (software emulation),
//! which is slow: every wait here is generous and measured rather than assumed.
//!
//! # Design
//! - [`machine`]: what to boot and how, turned into a QEMU command line (pure, unit-tested).
//! - [`console`]: the serial console as text: escape sequences stripped, searched by line.
//! - [`seed`]: seed disks as cloud-init's NoCloud (`CIDATA`) and ConfigDrive (`config-2`)
//!   datasources read them, made with mtools, so no loop device or mount is needed.
//! - [`metadata`]: a provider's metadata service at 169.254.169.254 (Hetzner's), served
//!   through QEMU's user network, with the provider's DMI strings.
//! - [`vm`]: a running VM; killed when its handle drops, its console kept on failure; its
//!   power cut ([`Vm::crash`]) and put back on ([`Vm::power_on`]) with the same disk.
//! - [`shell`]: a root shell in the guest over a virtio serial port, for tests that ask for
//!   one in the VM's user-data (the image itself has none).
//! - [`tool`]: running mtools and dosfstools with errors naming the command.
//! - [`image`]: finding a built image (a raw disk plain or as `.xz`) and writing its raw
//!   disk.
//! - [`rpi`]: the Raspberry Pi SD image booted the way its firmware would, for `raspi3b`.
//!
//! # Limitations
//! The image has no login and no SSH: a test sees a VM through its serial console (the
//! Uncloud console banner), through `uc`, and through the test shell its user-data starts.

pub mod console;
pub mod image;
pub mod machine;
pub mod metadata;
pub mod rpi;
pub mod seed;
pub mod shell;
pub mod tool;
pub mod vm;

pub use machine::{Arch, Boot, Machine, VmFiles};
pub use metadata::{Hetzner, MetadataService};
pub use seed::SeedDisk;
pub use shell::Shell;
pub use vm::{Vm, VmError};
