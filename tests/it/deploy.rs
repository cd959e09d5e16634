//! The deploy specs checked against the program itself: every file a platform reads
//! (`.do/app.yaml`, `.do/deploy.template.yaml`, `deploy/kubernetes.yaml` and its variant
//! `deploy/kubernetes-api.yaml`, `Procfile`, `Dockerfile`) must agree with rollcall's
//! settings, port and endpoints; and the platform API answers the tests replay
//! (`tests/fixtures/platform/`) must have the shape the platforms document.
//!
//! Each platform's way of turning those files into a process is modelled as the platform
//! documents it (Docker: ENTRYPOINT + CMD; Kubernetes: `command` replaces ENTRYPOINT and
//! `args` replaces CMD; Dokku's Dockerfile builder: the Procfile's `web:` words replace
//! CMD, in the image's WORKDIR; Heroku's container stack: heroku.yml's image and its CMD;
//! Heroku and Dokku buildpack builds: the Procfile in /app,
//! where the Rust buildpack copies the binary to `target/release/`). The argv it derives
//! must name a file that exists in the image's layout, and the real binary, placed there
//! and started with that argv, must answer `/readyz`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use rollcall::config::Cli;
use rollcall::identity::PLATFORM_VARIABLES;
use serde::Deserialize;
use serde_yaml::Value;

use crate::common::*;

fn read(path: &str) -> String {
    let full = repo(path);
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

/// The Kubernetes manifests: the plain one, and the opt-in variant whose pods may list
/// pods (PLATFORM_API=kubernetes). Each is applied instead of the other.
const KUBERNETES: &str = "deploy/kubernetes.yaml";
const KUBERNETES_API: &str = "deploy/kubernetes-api.yaml";
const KUBERNETES_MANIFESTS: [&str; 2] = [KUBERNETES, KUBERNETES_API];

/// What the variant adds to the plain manifest's container: the platform method, its
/// label selector, and the namespace to list pods in.
const KUBERNETES_API_ENV: [&str; 3] = ["PLATFORM_API", "PLATFORM_API_SELECTOR", "POD_NAMESPACE"];

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().map(|d| str_of(d, "kind")).collect()
}

/// The one document of this kind.
fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in {:?}", kinds(docs));
    found[0]
}

fn deployment(docs: &[Value]) -> &Value {
    only(docs, "Deployment")
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
    let _machine = shared().await;
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
        if ["DATABASE_URL", "ROLLCALL_PLATFORM", "PUBLIC_URL", "APP_ID"].contains(&key) {
            continue; // filled in by the platform / read as a platform variable
        }
        argv.push(format!(
            "--{}={value}",
            key.to_ascii_lowercase().replace('_', "-")
        ));
    }
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));

    // The page streams and polls: App Platform's edge cache must stay out of the way.
    assert_eq!(app["disable_edge_cache"].as_bool(), Some(true));

    // The health check path answers 200 from a running replica, and a replica left with
    // the spec's placeholder secret says membership is unproven rather than "proven".
    let path = str_of(&svc["health_check"], "http_path");
    let port = free_port();
    let placeholder = str_of(secret, "value");
    let r = Replica::start(
        8,
        port,
        &[("SCAN_CIDRS", "off"), ("CLUSTER_SECRET", placeholder)],
    );
    identity_of(&r).await;
    let resp = client().get(r.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let status = status_of(&r).await.expect("status");
    let membership = status["membership"].as_str().unwrap_or_default();
    assert!(
        membership.starts_with("unproven") && membership.contains("placeholder"),
        "{membership}"
    );
    // It answers challenges with no proof: the placeholder proves nothing.
    let identity = get_json(&r.url("/api/identity?nonce=00ff"))
        .await
        .expect("identity");
    assert!(identity["proof"].is_null(), "{identity}");
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

/// What a built image holds and runs, read from the Dockerfile's final stage.
#[derive(Debug, Default)]
struct Image {
    workdir: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// `ENV PATH`, else the Debian base image's.
    path: String,
    user: String,
    /// Absolute paths in the image where the build stage's binary was copied.
    binaries: Vec<String>,
}

/// Joins a path in the image onto the working directory, as exec and WORKDIR do.
fn in_image(dir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", dir.trim_end_matches('/'))
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The Dockerfile's instructions, one per entry, continuation lines joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut joined = String::new();
    let mut out = Vec::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && joined.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            joined.push_str(part);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        let text = std::mem::take(&mut joined);
        if let Some((word, rest)) = text.trim().split_once(char::is_whitespace) {
            out.push((word.to_ascii_uppercase(), rest.trim().to_string()));
        }
    }
    out
}

/// ENTRYPOINT and CMD in exec form (a JSON list); the shell form would need /bin/sh, which
/// we do not rely on.
fn exec_form(instruction: &str, value: &str) -> Vec<String> {
    serde_json::from_str(value)
        .unwrap_or_else(|e| panic!("{instruction} must be a JSON list (exec form): {value}: {e}"))
}

/// Reads the final stage as Docker builds it: which binary lands where, and what runs.
fn image_of(dockerfile: &str) -> Image {
    let mut stages: Vec<(Option<String>, Image)> = Vec::new();
    for (word, rest) in instructions(dockerfile) {
        if word == "FROM" {
            let name = rest
                .split_whitespace()
                .skip_while(|w| !w.eq_ignore_ascii_case("as"))
                .nth(1)
                .map(String::from);
            let image = Image {
                workdir: "/".into(),
                path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                user: "root".into(),
                ..Image::default()
            };
            stages.push((name, image));
            continue;
        }
        let build_workdir = stages
            .first()
            .map(|(_, s)| s.workdir.clone())
            .unwrap_or_default();
        let (_, image) = stages.last_mut().expect("FROM comes first");
        match word.as_str() {
            "WORKDIR" => image.workdir = in_image(&image.workdir, &rest),
            "USER" => image.user = rest,
            "ENTRYPOINT" => {
                image.entrypoint = exec_form(&word, &rest);
                // Docker: setting ENTRYPOINT resets a CMD inherited from the base image.
                image.cmd.clear();
            }
            "CMD" => image.cmd = exec_form(&word, &rest),
            "ENV" => {
                if let Some(path) = rest.strip_prefix("PATH=") {
                    image.path = path.replace("$PATH", &image.path);
                }
            }
            "COPY" if rest.starts_with("--from=") => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let (source, dest) = (words[1], words[words.len() - 1]);
                let built = in_image(
                    &build_workdir,
                    &format!("target/release/{}", env!("CARGO_PKG_NAME")),
                );
                assert_eq!(
                    source, built,
                    "the build stage leaves the binary at {built}"
                );
                let dest = if dest.ends_with('/') {
                    format!("{dest}{}", env!("CARGO_PKG_NAME"))
                } else {
                    dest.to_string()
                };
                image.binaries.push(in_image(&image.workdir, &dest));
            }
            _ => {}
        }
    }
    stages.pop().expect("a FROM").1
}

/// How a platform would start the web process: the argv it execs and where.
#[derive(Debug)]
struct Launch {
    platform: &'static str,
    argv: Vec<String>,
    cwd: String,
    /// Files the platform's build leaves in the container, by absolute path.
    binaries: Vec<String>,
    path: String,
}

impl Launch {
    /// The absolute path exec would run: relative to the working directory when the
    /// program has a slash, else the first PATH entry holding it.
    fn program(&self) -> String {
        let program = &self.argv[0];
        if program.contains('/') {
            return in_image(&self.cwd, program);
        }
        self.path
            .split(':')
            .map(|dir| in_image(dir, program))
            .find(|candidate| self.binaries.contains(candidate))
            .unwrap_or_else(|| {
                panic!(
                    "{}: `{program}` is on no PATH entry ({}) of the image; \
                     exec would fail with 'executable file not found'",
                    self.platform, self.path
                )
            })
    }

    /// Places the real binary where the platform's build leaves it, under `root`, and
    /// starts it the way the platform would.
    async fn start(&self, root: &Path, last: u8) -> Replica {
        let program = self.program();
        assert!(
            self.binaries.contains(&program),
            "{}: runs {program} (argv {:?} in {}), but the image holds the binary only at {:?}",
            self.platform,
            self.argv,
            self.cwd,
            self.binaries
        );
        for binary in &self.binaries {
            let at = root.join(binary.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().expect("a parent")).expect("layout");
            if !at.exists() {
                std::os::unix::fs::symlink(BIN, &at).expect("place the binary");
            }
        }
        let cwd = root.join(self.cwd.trim_start_matches('/'));
        std::fs::create_dir_all(&cwd).expect("working directory");
        let mut cmd = Command::new(root.join(program.trim_start_matches('/')));
        cmd.args(&self.argv[1..]).current_dir(&cwd);
        let port = free_port();
        let replica = Replica::spawn(cmd, last, port, &[("SCAN_CIDRS", "off")], None);
        eventually(
            &format!("{} to start and answer /readyz", self.platform),
            || async {
                match client().get(replica.url("/readyz")).send().await {
                    Ok(r) if r.status() == 200 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        replica
    }
}

fn words(command: &str) -> Vec<String> {
    command.split_whitespace().map(String::from).collect()
}

/// The Procfile's `web:` command, with `$PORT` as Dokku's procfile-util expands it.
fn procfile_web() -> String {
    read("Procfile")
        .lines()
        .find_map(|l| l.strip_prefix("web:"))
        .expect("a web: line")
        .trim()
        .replace("$PORT", "8080")
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_sequence().map(|items| {
        items
            .iter()
            .map(|i| i.as_str().expect("a string").to_string())
            .collect()
    })
}

fn kubernetes_container(docs: &[Value]) -> &Value {
    &deployment(docs)["spec"]["template"]["spec"]["containers"][0]
}

/// Every way our files are started, derived as each platform derives it.
fn launches() -> Vec<Launch> {
    let image = image_of(&read("Dockerfile"));
    let from_image = |platform, argv: Vec<String>| Launch {
        platform,
        argv,
        cwd: image.workdir.clone(),
        binaries: image.binaries.clone(),
        path: image.path.clone(),
    };
    let docker = [image.entrypoint.clone(), image.cmd.clone()].concat();
    // Kubernetes: `command` replaces ENTRYPOINT (and then the image's CMD is dropped too);
    // `args` replaces CMD.
    let kubernetes = |path: &str| {
        let docs = yaml_docs(path);
        let container = kubernetes_container(&docs);
        match (strings(&container["command"]), strings(&container["args"])) {
            (Some(command), args) => [command, args.unwrap_or_default()].concat(),
            (None, Some(args)) => [image.entrypoint.clone(), args].concat(),
            (None, None) => docker.clone(),
        }
    };
    let dokku = [image.entrypoint.clone(), words(&procfile_web())].concat();
    // Heroku's container stack builds what heroku.yml names; with no `run:` section it
    // starts the image's ENTRYPOINT + CMD (the Procfile is not read).
    let heroku_yml = yaml("heroku.yml");
    assert_eq!(heroku_yml["build"]["docker"]["web"], "Dockerfile");
    assert!(
        heroku_yml["run"].is_null(),
        "a run: section would replace CMD"
    );
    vec![
        from_image("docker / App Platform (Dockerfile)", docker.clone()),
        from_image(
            "kubernetes (deploy/kubernetes.yaml)",
            kubernetes(KUBERNETES),
        ),
        from_image(
            "kubernetes (deploy/kubernetes-api.yaml)",
            kubernetes(KUBERNETES_API),
        ),
        from_image("heroku (container stack, heroku.yml)", docker),
        from_image("dokku (Dockerfile builder, Procfile web:)", dokku),
        Launch {
            platform: "heroku / dokku buildpack (Procfile in /app)",
            argv: words(&procfile_web()),
            cwd: "/app".into(),
            binaries: vec![format!("/app/target/release/{}", env!("CARGO_PKG_NAME"))],
            path: "/usr/local/bin:/usr/bin:/bin".into(),
        },
    ]
}

#[tokio::test]
async fn every_platform_starts_the_binary_it_builds() {
    let _machine = shared().await;
    let root = std::env::temp_dir().join(format!("rollcall-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (i, launch) in launches().iter().enumerate() {
        println!("{}: {:?} in {}", launch.platform, launch.argv, launch.cwd);
        // Each platform's layout in its own root, so none finds another's binary.
        let layout: PathBuf = root.join(i.to_string());
        let replica = launch.start(&layout, 40 + i as u8).await;
        drop(replica);
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_model_catches_a_command_the_image_cannot_run() {
    // Today's mistake, kept as a check on the model itself: Kubernetes `args: ["serve"]`
    // over an image with no ENTRYPOINT runs `serve` as the program.
    let image = image_of(
        "FROM rust AS build\nWORKDIR /src\nFROM debian\n\
         COPY --from=build /src/target/release/rollcall /usr/local/bin/rollcall\n\
         CMD [\"rollcall\", \"serve\"]\n",
    );
    let launch = Launch {
        platform: "kubernetes",
        argv: vec!["serve".into()],
        cwd: image.workdir.clone(),
        binaries: image.binaries.clone(),
        path: image.path.clone(),
    };
    let program = std::panic::catch_unwind(|| launch.program());
    assert!(program.is_err(), "`serve` must not resolve to a program");
    // And a Procfile path that the image does not hold (Dokku runs it in WORKDIR).
    let image = image_of(
        "FROM rust AS build\nWORKDIR /src\nFROM debian\nWORKDIR /var/lib/rollcall\n\
         COPY --from=build /src/target/release/rollcall /usr/local/bin/\n",
    );
    let launch = Launch {
        platform: "dokku",
        argv: words("./target/release/rollcall serve"),
        cwd: image.workdir.clone(),
        binaries: image.binaries.clone(),
        path: image.path.clone(),
    };
    assert_eq!(
        launch.program(),
        "/var/lib/rollcall/target/release/rollcall"
    );
    assert!(!launch.binaries.contains(&launch.program()));
}

#[test]
fn dockerfile_copies_what_exists_and_builds_as_ci_does() {
    let dockerfile = read("Dockerfile");
    for (word, rest) in instructions(&dockerfile) {
        if word != "COPY" || rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo(source).exists(),
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
    // Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
    let image = image_of(&dockerfile);
    assert_eq!(image.user, "10001:10001");
    let ignored = read(".dockerignore");
    for path in ["target/", ".git/"] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            ".dockerignore leaves out {path}"
        );
    }
}

fn container_security(docs: &[Value]) -> (&Value, &Value) {
    let pod = &deployment(docs)["spec"]["template"]["spec"];
    (pod, &kubernetes_container(docs)["securityContext"])
}

#[tokio::test]
async fn kubernetes_manifest_matches_the_program() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(9, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let known = known_variables();
    for path in KUBERNETES_MANIFESTS {
        let docs = yaml_docs(path);
        let expected_kinds: &[&str] = if path == KUBERNETES_API {
            &[
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "Deployment",
                "Service",
                "Service",
            ]
        } else {
            &["Deployment", "Service", "Service"]
        };
        assert_eq!(kinds(&docs), expected_kinds, "{path}");
        let deployment = deployment(&docs);
        assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3), "{path}");
        let container = kubernetes_container(&docs);
        let port = container["ports"][0]["containerPort"].as_u64();
        let mut env = std::collections::BTreeMap::new();
        for e in container["env"].as_sequence().expect("env") {
            let name = str_of(e, "name");
            assert!(
                known.contains(name),
                "{path}: {name} is not a variable rollcall reads"
            );
            env.insert(name.to_string(), e.clone());
        }
        assert_eq!(
            port,
            env["PORT"]["value"].as_str().and_then(|p| p.parse().ok()),
            "{path}"
        );
        assert_eq!(port, Some(u64::from(default_port())), "{path}");
        assert_eq!(
            env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
            "status.podIP"
        );
        assert_eq!(
            env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        // The secret comes from a Secret, and pods start without one (membership unproven).
        let secret = &env["CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"];
        assert_eq!(
            secret["optional"].as_bool(),
            Some(true),
            "{path}: {secret:?}"
        );
        // No registry is claimed: a read-only root filesystem has no room for SQLite.
        assert_eq!(env["DATABASE_URL"]["value"], "off", "{path}");
        // rollcall resolves the headless Service by name, and the normal one too (an alias).
        let dns_names = str_of(&env["DNS_NAMES"], "value");
        let services: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Service").collect();
        let headless = services
            .iter()
            .find(|d| d["spec"]["clusterIP"] == "None")
            .expect("a headless Service");
        let normal = services
            .iter()
            .find(|d| d["spec"]["clusterIP"] != "None")
            .expect("a normal Service");
        for svc in [headless, normal] {
            let name = str_of(&svc["metadata"], "name");
            assert!(
                dns_names.split(',').any(|n| n == name),
                "{path}: {name} not in DNS_NAMES={dns_names}"
            );
            assert_eq!(
                svc["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"],
                "{path}"
            );
        }
        // Every literal value parses as the setting it sets.
        let mut argv = vec!["rollcall".to_string()];
        for (name, e) in &env {
            if let Some(value) = e["value"].as_str() {
                argv.push(format!(
                    "--{}={value}",
                    name.to_ascii_lowercase().replace('_', "-")
                ));
            }
        }
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{path}: {argv:?}: {e}"));
        cli.settings
            .validate()
            .unwrap_or_else(|e| panic!("{path}: {argv:?}: {e}"));
        for probe in ["readinessProbe", "livenessProbe"] {
            let path = str_of(&container[probe]["httpGet"], "path");
            let resp = client().get(r.url(path)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{probe} {path}");
        }
        // The drain (DRAIN_SECS at most, goodbye, close deadline) fits the grace period.
        let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        let drain = Cli::try_parse_from(["rollcall"])
            .expect("defaults")
            .settings
            .drain
            .as_secs();
        assert!(
            grace >= drain + 2 + rollcall::drain::CLOSE_DEADLINE.as_secs(),
            "{path}: grace {grace} s"
        );
    }
}

/// The Pod Security Standards "restricted" profile, as kubernetes/pod-security-admission
/// checks it, plus a read-only root filesystem; no service-account token, except in the
/// variant that calls the API with it.
#[test]
fn kubernetes_pod_meets_the_restricted_profile() {
    for path in KUBERNETES_MANIFESTS {
        let docs = yaml_docs(path);
        let (pod, container) = container_security(&docs);
        let pod_security = &pod["securityContext"];
        let either = |key: &str| {
            if container[key].is_null() {
                pod_security[key].clone()
            } else {
                container[key].clone()
            }
        };
        assert_eq!(either("runAsNonRoot").as_bool(), Some(true), "{path}");
        let user = either("runAsUser").as_u64().expect("a numeric runAsUser");
        assert_ne!(user, 0, "{path}");
        assert_eq!(
            user.to_string(),
            image_of(&read("Dockerfile"))
                .user
                .split(':')
                .next()
                .unwrap_or_default(),
            "{path}: the pod's user is the image's"
        );
        assert_eq!(either("seccompProfile")["type"], "RuntimeDefault", "{path}");
        assert_eq!(
            container["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{path}"
        );
        assert_eq!(
            strings(&container["capabilities"]["drop"]),
            Some(vec!["ALL".to_string()]),
            "{path}"
        );
        assert!(container["capabilities"]["add"].is_null(), "{path}");
        assert_eq!(
            container["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{path}"
        );
        let token = pod["automountServiceAccountToken"].as_bool();
        if path == KUBERNETES_API {
            // The API call needs the token, under the account the RoleBinding names.
            assert_eq!(token, Some(true), "{path}");
            assert!(pod["serviceAccountName"].is_string(), "{path}");
        } else {
            assert_eq!(token, Some(false), "{path}");
            assert!(pod["serviceAccountName"].is_null(), "{path}");
        }
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[key].is_null(), "{path}: {key}");
        }
        assert!(
            container["privileged"].is_null() || container["privileged"] == false,
            "{path}: privileged"
        );
        for volume in pod["volumes"].as_sequence().into_iter().flatten() {
            assert!(volume["hostPath"].is_null(), "{path}: hostPath volume");
        }
    }
}

/// The variant's token may read pods in its own namespace and do nothing else, and it is
/// the Deployment's pods that hold it.
#[test]
fn kubernetes_api_role_allows_reading_pods_only() {
    let docs = yaml_docs(KUBERNETES_API);
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        assert!(
            !kinds(&docs).contains(&kind),
            "a {kind} would reach beyond the namespace"
        );
    }
    // Every object lands in the namespace `kubectl apply -n` names, together.
    for doc in &docs {
        assert!(
            doc["metadata"]["namespace"].is_null(),
            "{} names a namespace",
            str_of(&doc["metadata"], "name")
        );
    }
    let account = only(&docs, "ServiceAccount");
    let account_name = str_of(&account["metadata"], "name");
    let role = only(&docs, "Role");
    let role_name = str_of(&role["metadata"], "name");
    let rules = role["rules"].as_sequence().expect("rules");
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let rule = rules[0].as_mapping().expect("a rule");
    let mut keys: Vec<&str> = rule.keys().filter_map(Value::as_str).collect();
    keys.sort_unstable();
    // No resourceNames (a list is not by name) and no nonResourceURLs.
    assert_eq!(keys, ["apiGroups", "resources", "verbs"], "{rule:?}");
    // The core group ("") only, pods only (not pods/log, pods/exec, …), no wildcard.
    assert_eq!(strings(&rules[0]["apiGroups"]), Some(vec![String::new()]));
    assert_eq!(
        strings(&rules[0]["resources"]),
        Some(vec!["pods".to_string()])
    );
    let mut verbs = strings(&rules[0]["verbs"]).expect("verbs");
    verbs.sort();
    // rollcall only lists: no get, no watch, nothing that writes, no *.
    assert_eq!(verbs, ["list"]);

    let binding = only(&docs, "RoleBinding");
    let role_ref = &binding["roleRef"];
    assert_eq!(str_of(role_ref, "apiGroup"), "rbac.authorization.k8s.io");
    assert_eq!(str_of(role_ref, "kind"), "Role");
    assert_eq!(str_of(role_ref, "name"), role_name);
    let subjects = binding["subjects"].as_sequence().expect("subjects");
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(str_of(&subjects[0], "kind"), "ServiceAccount");
    assert_eq!(str_of(&subjects[0], "name"), account_name);
    // Without a namespace, the binding's own (RBAC's rule for ServiceAccount subjects).
    assert!(subjects[0]["namespace"].is_null(), "{subjects:?}");

    let pod = &deployment(&docs)["spec"]["template"]["spec"];
    assert_eq!(str_of(pod, "serviceAccountName"), account_name);
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(true));

    // The platform method asks for exactly the Deployment's pods, in the pod's namespace.
    let container = kubernetes_container(&docs);
    let env = |name: &str| {
        container["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not set"))
            .clone()
    };
    assert_eq!(env("PLATFORM_API")["value"], "kubernetes");
    let selector = str_of(&env("PLATFORM_API_SELECTOR"), "value").to_string();
    let labels: serde_yaml::Mapping = selector
        .split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("key=value");
            (Value::from(k), Value::from(v))
        })
        .collect();
    let deployment = deployment(&docs);
    assert_eq!(
        Value::Mapping(labels.clone()),
        deployment["spec"]["selector"]["matchLabels"],
        "PLATFORM_API_SELECTOR={selector}"
    );
    assert_eq!(
        Value::Mapping(labels),
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
}

/// The variant is the plain manifest plus API access, nothing else: the same Deployment
/// and Services, so the two cannot drift apart.
#[test]
fn kubernetes_api_variant_is_the_plain_manifest_plus_api_access() {
    let plain = yaml_docs(KUBERNETES);
    let mut variant: Vec<Value> = yaml_docs(KUBERNETES_API)
        .into_iter()
        .filter(|d| !["ServiceAccount", "Role", "RoleBinding"].contains(&str_of(d, "kind")))
        .collect();
    let deployment = variant
        .iter_mut()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &mut deployment["spec"]["template"]["spec"];
    pod.as_mapping_mut()
        .expect("a pod spec")
        .remove("serviceAccountName");
    pod["automountServiceAccountToken"] = Value::Bool(false);
    pod["containers"][0]["env"]
        .as_sequence_mut()
        .expect("env")
        .retain(|e| !KUBERNETES_API_ENV.contains(&str_of(e, "name")));
    assert_eq!(variant, plain);
}

/// Runs kubernetes-validate (from PyPI, with the API schemas bundled) as `python3 args`;
/// `None` when it is not installed (outside CI the test then says it is skipped).
fn kubernetes_validate(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("python3").args(args).output() {
        Ok(out) if !String::from_utf8_lossy(&out.stderr).contains("No module named") => Some(out),
        other => {
            let e = other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            assert!(
                std::env::var_os("CI").is_none(),
                "kubernetes-validate is missing under CI ({e:?}): scripts/test installs it"
            );
            println!(
                "skipped: kubernetes-validate is not installed ({e:?}); scripts/test installs it"
            );
            None
        }
    }
}

/// The manifests validated by a real Kubernetes schema validator, in strict mode: no
/// unknown or misplaced field.
#[test]
fn kubernetes_manifest_validates_strictly() {
    for path in KUBERNETES_MANIFESTS {
        let manifest = repo(path);
        let manifest = manifest.to_str().expect("a UTF-8 path");
        let args = ["-m", "kubernetes_validate", "--strict", "--quiet", manifest];
        let Some(out) = kubernetes_validate(&args) else {
            return;
        };
        assert!(
            out.status.success(),
            "kubernetes-validate --strict failed for {path}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The PodList the Kubernetes tests are served is one the API server could send: the
/// PodList schema (Kubernetes' OpenAPI, as kubernetes-validate bundles it), strictly.
#[test]
fn kubernetes_pod_list_fixture_validates_strictly() {
    let fixture = repo("tests/fixtures/platform/kubernetes-pods.json");
    let script = "import json, sys, kubernetes_validate as kv\n\
                  print(kv.validate(json.load(open(sys.argv[1])), kv.latest_version(), strict=True))";
    let Some(out) = kubernetes_validate(&["-c", script, fixture.to_str().expect("UTF-8")]) else {
        return;
    };
    assert!(
        out.status.success(),
        "the PodList fixture does not validate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Machines list the Fly tests are served has the properties Fly documents for a
/// Machine (superfly/docs machines/api/machines-resource.html.markerb), in the states
/// Fly documents (machines/machine-states.html.markerb).
#[test]
fn fly_machines_fixture_has_the_documented_shape() {
    let body = read("tests/fixtures/platform/fly-machines.json");
    let machines: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let machines = machines
        .as_array()
        .expect("a bare array, as List Machines answers");
    assert!(!machines.is_empty());
    const STATES: &[&str] = &[
        "created",
        "started",
        "stopped",
        "suspended",
        "failed",
        "creating",
        "starting",
        "stopping",
        "restarting",
        "suspending",
        "destroying",
        "launch_failed",
        "updating",
        "replacing",
        "destroyed",
        "replaced",
        "migrated",
    ];
    for m in machines {
        for key in [
            "id",
            "name",
            "state",
            "region",
            "instance_id",
            "private_ip",
            "config",
            "image_ref",
            "created_at",
            "updated_at",
        ] {
            assert!(!m[key].is_null(), "{key} missing in {m}");
        }
        let state = m["state"].as_str().expect("state");
        assert!(STATES.contains(&state), "{state}");
        let ip: std::net::Ipv6Addr = m["private_ip"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .expect("a 6PN IPv6 private_ip");
        assert_eq!(ip.segments()[0], 0xfdaa, "6PN addresses are in fdaa::/16");
        assert!(m["config"]["metadata"]["fly_process_group"].is_string());
    }
}
