//! Every daemon in the workspace is packaged into the image: `image/build-debs` makes a
//! package of each crate under `services/` that has a `dist/` folder, so a daemon without one
//! would silently be missing from the image. These checks need no image.

use std::path::PathBuf;

fn services() -> Vec<PathBuf> {
    let dir = uncloud_e2e::workspace().join("services");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no crates under {}", dir.display());
    out
}

#[test]
fn every_service_ships_a_unit_wanted_by_uncloud_target_and_its_docs() {
    for svc in services() {
        let name = svc.file_name().unwrap().to_string_lossy().into_owned();
        let dist = svc.join("dist");
        assert!(
            dist.is_dir(),
            "services/{name} has no dist/: it would not be in the image"
        );
        let units: Vec<String> = std::fs::read_dir(&dist)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "service"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(
            !units.is_empty(),
            "services/{name}/dist has no .service unit"
        );
        assert!(
            units.iter().any(|u| u
                .lines()
                .any(|l| l.starts_with("WantedBy=") && l.contains("uncloud.target"))),
            "no unit of services/{name} is WantedBy=uncloud.target: the banner would not report it"
        );
        assert!(
            svc.join("README.md").exists(),
            "services/{name} has no README.md"
        );
        let manifest = std::fs::read_to_string(svc.join("Cargo.toml")).unwrap();
        assert!(
            manifest.lines().any(|l| l.starts_with("description = ")),
            "services/{name}/Cargo.toml has no description (the package's)"
        );
    }
}

#[test]
fn daemons_are_notify_units_that_restart_and_start_after_first_boot() {
    for svc in services() {
        let name = svc.file_name().unwrap().to_string_lossy().into_owned();
        if name == "firstboot" {
            continue; // oneshot units, not a daemon
        }
        let unit = std::fs::read_to_string(svc.join(format!("dist/{name}.service")))
            .unwrap_or_else(|e| panic!("services/{name}/dist/{name}.service: {e}"));
        for needed in ["Type=notify", "Restart=always", "NoNewPrivileges=yes"] {
            assert!(unit.contains(needed), "{name}.service lacks {needed}");
        }
        let after = unit
            .lines()
            .find_map(|l| l.strip_prefix("After="))
            .unwrap_or_default();
        assert!(
            after.contains("uncloud-firstboot.service"),
            "{name}.service must start after uncloud-firstboot.service (hostname, identity)"
        );
        if name != "stated" {
            assert!(
                after.contains("stated.service"),
                "{name}.service must start after stated"
            );
        }
    }
}

#[test]
fn uc_machine_status_and_logs_cover_every_daemon() {
    for svc in services() {
        let name = svc.file_name().unwrap().to_string_lossy().into_owned();
        let unit = if name == "firstboot" {
            "uncloud-firstboot.service".to_string()
        } else {
            format!("{name}.service")
        };
        assert!(
            uncloud_api::host::UNITS.contains(&unit.as_str()),
            "{unit} is not in uncloud_api::host::UNITS: `uc machine status` would not show it"
        );
        assert!(
            uncloud_api::host::LOG_UNITS.contains(&unit.as_str()),
            "{unit} is not in uncloud_api::host::LOG_UNITS: `uc machine logs` would leave it out"
        );
    }
}
