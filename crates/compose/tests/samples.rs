//! Real Compose projects (tests/samples, from docker/awesome-compose): each either becomes
//! services or fails with errors that name the key and its line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use uncloud_compose::{load, LoadError, Options, Project};

fn sample(name: &str) -> PathBuf {
    // At run time (cargo sets it): a test binary reused by another clone of the workspace
    // (unchanged sources are not rebuilt) would otherwise read the folder it was built in.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/samples")
        .join(name)
        .join("compose.yaml")
}

fn deploy(name: &str) -> Result<Project, LoadError> {
    load(&sample(name), &Options::default())
}

fn service<'a>(p: &'a Project, name: &str) -> &'a uncloud_compose::ComposeService {
    p.services.iter().find(|s| s.name == name).unwrap()
}

#[test]
fn gitea_with_postgres() {
    let p = deploy("gitea-postgres").unwrap();
    assert_eq!(p.name, "gitea-postgres");
    let gitea = service(&p, "gitea");
    assert_eq!(gitea.spec.image, "gitea/gitea:latest");
    assert_eq!(gitea.spec.env["DB_HOST"], "db:5432");
    assert_eq!(gitea.spec.restart, "always");
    assert_eq!(gitea.spec.publish, ["3000:3000"]);
    assert_eq!(gitea.spec.volumes, ["gitea-postgres_git_data:/data"]);
    assert_eq!(gitea.spec.replicas, 1);
    let db = service(&p, "db");
    assert_eq!(
        db.spec.volumes,
        ["gitea-postgres_db_data:/var/lib/postgresql/data"]
    );
    assert!(db.spec.publish.is_empty(), "expose publishes nothing");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn nextcloud_warns_that_networks_do_not_isolate() {
    let p = deploy("nextcloud-redis-mariadb").unwrap();
    let db = service(&p, "db");
    assert_eq!(
        db.spec.command,
        [
            "--transaction-isolation=READ-COMMITTED",
            "--binlog-format=ROW"
        ]
    );
    let lines: Vec<(usize, &str)> = p
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_str()))
        .collect();
    assert!(lines.contains(&(9, "services.nc.networks")), "{lines:?}");
    assert!(lines.contains(&(43, "networks")), "{lines:?}");
}

#[test]
fn portainer_binds_the_machines_docker_socket() {
    let p = deploy("portainer").unwrap();
    let s = service(&p, "portainer");
    assert_eq!(s.spec.command, ["-H", "unix:///var/run/docker.sock"]);
    assert_eq!(
        s.spec.volumes,
        [
            "/var/run/docker.sock:/var/run/docker.sock",
            "portainer_portainer_data:/data"
        ]
    );
    assert!(p
        .warnings
        .iter()
        .any(|w| w.key == "services.portainer.container_name" && w.line == 4));
}

#[test]
fn postgres_with_pgadmin_takes_its_values_from_dotenv_and_the_shell_wins() {
    let p = deploy("postgresql-pgadmin").unwrap();
    assert_eq!(
        service(&p, "postgres").spec.env["POSTGRES_USER"],
        "yourUser"
    );
    assert_eq!(
        service(&p, "pgadmin").spec.env["PGADMIN_DEFAULT_EMAIL"],
        "your@email.com"
    );
    let options = Options {
        shell: BTreeMap::from([("POSTGRES_USER".to_string(), "ada".to_string())]),
        project: Some("db-admin".into()),
        ..Default::default()
    };
    let p = load(&sample("postgresql-pgadmin"), &options).unwrap();
    assert_eq!(p.name, "db-admin");
    assert_eq!(service(&p, "postgres").spec.env["POSTGRES_USER"], "ada");
}

#[test]
fn prometheus_with_grafana_uploads_its_relative_binds_as_read_only_files() {
    let p = deploy("prometheus-grafana").unwrap();
    let dir = sample("prometheus-grafana");
    let dir = dir.parent().unwrap();
    let prometheus = &service(&p, "prometheus").spec;
    // The folder's one file, under the bind's target; the named volume stays a volume.
    assert_eq!(
        prometheus.volumes,
        ["prometheus-grafana_prom_data:/prometheus"]
    );
    let f = &prometheus.files[0];
    assert_eq!(
        (f.target.as_str(), f.mode & 0o222, f.secret),
        ("/etc/prometheus/prometheus.yml", 0, false)
    );
    let content = std::fs::read(dir.join("prometheus/prometheus.yml")).unwrap();
    assert_eq!(f.digest, uncloud_common::files::digest(&content));
    let grafana = &service(&p, "grafana").spec;
    assert_eq!(
        grafana.files[0].target,
        "/etc/grafana/provisioning/datasources/datasource.yml"
    );
    // Both contents go with the deploy, and the user is told the copies are read-only.
    assert_eq!(p.files.len(), 2);
    let warned: Vec<(usize, &str)> = p
        .warnings
        .iter()
        .filter(|w| w.message.contains("read-only copy"))
        .map(|w| (w.line, w.key.as_str()))
        .collect();
    assert_eq!(
        warned,
        [
            (11, "services.prometheus.volumes"),
            (23, "services.grafana.volumes")
        ]
    );
}

#[test]
fn wordpress_with_mysql_starts_in_file_order() {
    let p = deploy("wordpress-mysql").unwrap();
    let names: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "wordpress"]);
    assert_eq!(
        service(&p, "db").spec.command,
        ["--default-authentication-plugin=mysql_native_password"]
    );
}
