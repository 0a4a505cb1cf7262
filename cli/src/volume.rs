//! `uc volume …` and `uc image ls`: what each machine's engine keeps. A named volume lives on
//! one machine; `-m` says which (default: the connected one, `-m all` for every machine).

use clap::Subcommand;
use uncloud_api::wire::{Answer, Call, ImageInfo, VolumeInfo};

use crate::output::{self, Format};
use crate::targets::{self, unexpected};
use crate::update::UPDATE_API;
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Volume {
    /// The named volumes of the connected machine (with `-m`, of each machine).
    #[command(after_help = "Examples:\n  uc volume ls\n  uc volume ls -m all")]
    Ls,
    /// Create a named volume on the machines `-m` names (a volume of that name that exists
    /// already is kept). `uc run -v NAME:/path` and Compose create theirs when they start.
    #[command(
        after_help = "Examples:\n  uc volume create data -m alpha\n  uc volume create cache -m all"
    )]
    Create { name: String },
    /// Show one volume as JSON: driver, where its data lives on the machine, labels.
    #[command(after_help = "Examples:\n  uc volume inspect shop_db -m beta")]
    Inspect { name: String },
    /// Remove a named volume and its data from the machines `-m` names; refused while a
    /// container uses it.
    #[command(after_help = "Examples:\n  uc volume rm data -m alpha")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum Image {
    /// The images of the connected machine (with `-m`, of each machine).
    #[command(after_help = "Examples:\n  uc image ls\n  uc image ls -m all -o json")]
    Ls,
    /// Copy an image from this computer's Docker to the machines (all, or those of `-m`),
    /// through the connected one, without a registry. Machines that have it are skipped; a
    /// push that is interrupted loads nothing anywhere.
    #[command(
        after_help = "Examples:\n  uc image push app:1\n  uc image push -m alpha,beta registry.example.com/team/app:2"
    )]
    Push { image: String },
}

pub async fn volume(cmd: Volume, g: &Global) -> anyhow::Result<()> {
    let call = match cmd {
        Volume::Ls => Call::Volumes,
        Volume::Create { name } => Call::CreateVolume(name),
        Volume::Inspect { name } => Call::InspectVolume(name),
        Volume::Rm { name } => Call::RemoveVolume(name),
    };
    let replies = targets::ask(g, call, UPDATE_API).await?;
    if g.output == Format::Json {
        print!("{}", output::json(&replies));
        return targets::each(&replies, |_, _, _| Ok(()));
    }
    targets::each(&replies, |machine, answer, several| {
        match answer {
            Answer::Volumes(list) => {
                if several {
                    println!("on {machine}:");
                }
                print!("{}", volumes_table(list));
            }
            Answer::Volume(v) => {
                if several {
                    println!("on {machine}:");
                }
                print!("{}", output::json(v));
            }
            Answer::Removed(name) => println!("{name} removed on {machine}"),
            _ => return Err(unexpected(machine)),
        }
        Ok(())
    })
}

pub async fn image(cmd: Image, g: &Global) -> anyhow::Result<()> {
    if let Image::Push { image } = cmd {
        return crate::push::push(image, g).await;
    }
    let replies = targets::ask(g, Call::Images, UPDATE_API).await?;
    if g.output == Format::Json {
        print!("{}", output::json(&replies));
        return targets::each(&replies, |_, _, _| Ok(()));
    }
    targets::each(&replies, |machine, answer, several| {
        let Answer::Images(list) = answer else {
            return Err(unexpected(machine));
        };
        if several {
            println!("on {machine}:");
        }
        print!("{}", images_table(list));
        Ok(())
    })
}

fn volumes_table(list: &[VolumeInfo]) -> String {
    let mut list: Vec<&VolumeInfo> = list.iter().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| vec![v.name.clone(), v.driver.clone(), v.mountpoint.clone()])
        .collect();
    output::table(&["NAME", "DRIVER", "MOUNTPOINT"], &rows)
}

fn images_table(list: &[ImageInfo]) -> String {
    let mut rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
            vec![
                if i.tags.is_empty() {
                    "<none>".into()
                } else {
                    i.tags.join(", ")
                },
                id.chars().take(12).collect(),
                format!("{:.1} MB", i.size_bytes as f64 / 1e6),
            ]
        })
        .collect();
    rows.sort();
    output::table(&["IMAGE", "ID", "SIZE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_show_their_tags_a_short_id_and_size() {
        let t = images_table(&[ImageInfo {
            id: "sha256:0123456789abcdef".into(),
            tags: vec!["busybox:uc".into(), "app:1".into()],
            size_bytes: 2_500_000,
        }]);
        assert!(t.contains("busybox:uc, app:1  0123456789ab  2.5 MB"), "{t}");
    }
}
