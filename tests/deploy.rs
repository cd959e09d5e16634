//! The deploy specs checked against the program itself: every file a platform reads
//! (`.do/app.yaml`, `.do/deploy.template.yaml`, `deploy/kubernetes.yaml`, `Procfile`,
//! `Dockerfile`) must agree with rollcall's settings, port and endpoints.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use clap::{CommandFactory, Parser};
use common::*;
use rollcall::config::Cli;
use rollcall::identity::PLATFORM_VARIABLES;
use serde::Deserialize;
use serde_yaml::Value;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_docs(path: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// Every environment variable rollcall reads: its settings and the platform's variables.
fn known_variables() -> BTreeSet<String> {
    let mut vars: BTreeSet<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    vars.extend(PLATFORM_VARIABLES.iter().map(|v| v.to_string()));
    vars
}

fn default_port() -> u16 {
    Cli::try_parse_from(["rollcall"])
        .expect("defaults parse")
        .settings
        .port
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v:?}"))
}

/// App Platform sizes that allow only one instance.
const SINGLE_INSTANCE_SIZES: &[&str] = &[
    "apps-s-1vcpu-0.5gb",
    "apps-s-1vcpu-1gb-fixed",
    "basic-xxs",
    "basic-xs",
];

#[tokio::test]
async fn app_platform_spec_matches_the_program() {
    let app = yaml(".do/app.yaml");
    let services = app["services"].as_sequence().expect("services");
    assert_eq!(services.len(), 1);
    let svc = &services[0];
    assert_eq!(svc["http_port"].as_u64(), Some(u64::from(default_port())));
    let count = svc["instance_count"].as_u64().expect("instance_count");
    assert!(count >= 3, "{count}");
    let size = str_of(svc, "instance_size_slug");
    assert!(
        !SINGLE_INSTANCE_SIZES.contains(&size),
        "{size} allows only one instance"
    );
    assert_eq!(str_of(svc, "dockerfile_path"), "Dockerfile");
    assert!(
        svc["termination"]["drain_seconds"]
            .as_u64()
            .is_some_and(|s| s > 0)
    );

    let known = known_variables();
    let envs = svc["envs"].as_sequence().expect("envs");
    let mut keys = BTreeSet::new();
    for env in envs {
        let key = str_of(env, "key");
        assert!(known.contains(key), "{key} is not a setting rollcall reads");
        keys.insert(key);
    }
    for required in [
        "ROLLCALL_PLATFORM",
        "SERVICE_NAME",
        "EXPECTED_REPLICAS",
        "DATABASE_URL",
        "CLUSTER_SECRET",
    ] {
        assert!(keys.contains(required), "{required} missing");
    }
    let secret = envs.iter().find(|e| e["key"] == "CLUSTER_SECRET").unwrap();
    assert_eq!(str_of(secret, "type"), "SECRET");
    let db = envs.iter().find(|e| e["key"] == "DATABASE_URL").unwrap();
    assert_eq!(str_of(db, "value"), "${db.DATABASE_URL}");
    let database = &app["databases"][0];
    assert_eq!(
        (str_of(database, "name"), str_of(database, "engine")),
        ("db", "PG")
    );
    assert_eq!(database["production"].as_bool(), Some(false));

    // Every non-secret value is one rollcall accepts.
    let mut argv = vec!["rollcall".to_string()];
    for env in envs {
        let key = str_of(env, "key");
        let value = str_of(env, "value");
        if ["DATABASE_URL", "ROLLCALL_PLATFORM", "PUBLIC_URL"].contains(&key) {
            continue; // filled in by the platform / read as a platform variable
        }
        argv.push(format!(
            "--{}={value}",
            key.to_ascii_lowercase().replace('_', "-")
        ));
    }
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));

    // The health check path answers 200 from a running replica.
    let path = str_of(&svc["health_check"], "http_path");
    let port = free_port();
    let r = Replica::start(8, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let resp = client().get(r.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
}

#[test]
fn deploy_button_template_is_the_same_app() {
    let mut app = yaml(".do/app.yaml");
    let template = yaml(".do/deploy.template.yaml");
    let mut spec = template["spec"].clone();
    let git = spec["services"][0]["git"].clone();
    assert!(
        str_of(&git, "repo_clone_url").starts_with("https://github.com/"),
        "{git:?}"
    );
    // Apart from the source, the same app.
    if let Some(m) = spec["services"][0].as_mapping_mut() {
        m.remove("git");
    }
    if let Some(m) = app["services"][0].as_mapping_mut() {
        m.remove("github");
    }
    assert_eq!(spec, app);
    let readme = read("README.md");
    assert!(
        readme.contains("https://cloud.digitalocean.com/apps/new?repo="),
        "README has the Deploy to DigitalOcean button"
    );
}

#[tokio::test]
async fn kubernetes_manifest_matches_the_program() {
    let docs = yaml_docs("deploy/kubernetes.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| str_of(d, "kind")).collect();
    assert_eq!(kinds, ["Deployment", "Service", "Service"]);
    let deployment = &docs[0];
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"][0]["containerPort"].as_u64();
    let known = known_variables();
    let mut env = std::collections::BTreeMap::new();
    for e in container["env"].as_sequence().expect("env") {
        let name = str_of(e, "name");
        assert!(
            known.contains(name),
            "{name} is not a variable rollcall reads"
        );
        env.insert(name.to_string(), e.clone());
    }
    assert_eq!(
        port,
        env["PORT"]["value"].as_str().and_then(|p| p.parse().ok())
    );
    assert_eq!(port, Some(u64::from(default_port())));
    assert_eq!(
        env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // rollcall resolves the headless Service by name, and the normal one too (an alias).
    let dns_names = str_of(&env["DNS_NAMES"], "value");
    let headless = docs
        .iter()
        .find(|d| d["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    let normal = docs
        .iter()
        .skip(1)
        .find(|d| d["spec"]["clusterIP"] != "None")
        .expect("a normal Service");
    for svc in [headless, normal] {
        let name = str_of(&svc["metadata"], "name");
        assert!(
            dns_names.split(',').any(|n| n == name),
            "{name} not in DNS_NAMES={dns_names}"
        );
        assert_eq!(
            svc["spec"]["selector"],
            deployment["spec"]["selector"]["matchLabels"]
        );
    }
    // The container's arguments parse, and its probes answer on a running replica.
    let args: Vec<String> = container["args"]
        .as_sequence()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Cli::try_parse_from(std::iter::once("rollcall".to_string()).chain(args)).expect("args parse");
    let port = free_port();
    let r = Replica::start(9, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = str_of(&container[probe]["httpGet"], "path");
        let resp = client().get(r.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{probe} {path}");
    }
}

#[test]
fn procfile_starts_the_built_binary() {
    let procfile = read("Procfile");
    let web = procfile
        .lines()
        .find_map(|l| l.strip_prefix("web:"))
        .expect("a web: line");
    let mut words = web.split_whitespace();
    let program = words.next().expect("a command");
    assert!(
        program.ends_with(&format!("target/release/{}", env!("CARGO_PKG_NAME"))),
        "{program}"
    );
    let args: Vec<&str> = std::iter::once("rollcall").chain(words).collect();
    Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
}

#[test]
fn dockerfile_copies_what_exists_and_builds_as_ci_does() {
    let dockerfile = read("Dockerfile");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                root.join(source).exists(),
                "Dockerfile copies {source}, which does not exist"
            );
        }
    }
    let build = "cargo build --release --locked";
    assert!(
        dockerfile.contains(build),
        "the Dockerfile builds with `{build}`"
    );
    assert!(
        read("scripts/test").contains(build),
        "CI runs the Dockerfile's build, `{build}`"
    );
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(
        !dockerfile
            .lines()
            .any(|l| l.trim_start().starts_with("HEALTHCHECK")),
        "platforms check /readyz themselves"
    );
    assert!(dockerfile.contains("USER "), "runs as a non-root user");
    let cmd = dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("a CMD");
    let args: Vec<String> =
        serde_json::from_str(cmd.trim_start_matches("CMD ")).expect("CMD as JSON");
    assert_eq!(args[0], env!("CARGO_PKG_NAME"));
    Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
}
