//! deploy/: the compose file, Grafana provisioning and alert rules checked by
//! their own tools, and the end-to-end proof against a real Prometheus.

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
#[ignore = "needs python3-yaml and promtool: run scripts/test"]
fn compose_provisioning_and_rules_are_valid() {
    run("python3", &["scripts/check-deploy.py"], &[]);
    let rules = run(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        &[],
    );
    assert!(rules.contains("SUCCESS"), "{rules}");
    let config = run(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        &[],
    );
    assert!(config.contains("SUCCESS"), "{config}");
}

#[test]
#[ignore = "needs prometheus and wrk: run scripts/test"]
fn every_panel_and_alert_returns_data_and_the_5xx_alert_fires() {
    // The test build has the commit fault hook the script relies on.
    let out = run(
        "scripts/prometheus-e2e.sh",
        &[],
        &[("FIBD", env!("CARGO_BIN_EXE_fibd"))],
    );
    assert!(out.contains("FIRING FibdHigh5xxRatio"), "{out}");
    assert!(!out.contains("FAIL "), "{out}");
    assert!(out.contains("prometheus-e2e: OK"), "{out}");
}

// deploy/cluster/: three VMs each running an etcd member and a fibd node,
// and the load balancer in front (nginx, or HAProxy with active checks).

mod support;

use std::collections::BTreeSet;

use support::nginx::{Nginx, free_port, self_signed_certificate};
use support::{DataDir, Fibd};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster");
const VMS: [&str; 3] = ["vm1", "vm2", "vm3"];

fn cluster_file(path: &str) -> String {
    let path = format!("{CLUSTER}/{path}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The `KEY=VALUE` settings of an environment file, or the `KEY=VALUE` of a
/// unit's `Environment=` lines; comments and blank lines dropped. A key set
/// twice keeps its last value, as systemd does.
fn settings(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| l.strip_prefix("Environment=").unwrap_or(l))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn setting<'a>(map: &'a std::collections::BTreeMap<String, String>, key: &str) -> &'a str {
    map.get(key)
        .unwrap_or_else(|| panic!("{key} is not set in {map:?}"))
}

/// `http://10.0.0.1:2379` -> `10.0.0.1`.
fn url_host(url: &str) -> &str {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    rest.rsplit_once(':').expect("host:port").0
}

#[test]
fn cluster_files_agree_with_each_other() {
    let etcd_common = settings(&cluster_file("common/etcd.service.d/fibd-cluster.conf"));
    let fibd_dropin = cluster_file("common/fibd.service.d/cluster.conf");
    let nginx = cluster_file("nginx.conf");
    let haproxy = cluster_file("haproxy.cfg");
    let members: Vec<(String, String)> = setting(&etcd_common, "ETCD_INITIAL_CLUSTER")
        .split(',')
        .map(|m| {
            let (name, url) = m.split_once('=').expect("name=peer URL");
            (name.to_owned(), url.to_owned())
        })
        .collect();
    assert_eq!(
        members.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        VMS
    );
    let mut client_urls = BTreeSet::new();
    let mut node_names = BTreeSet::new();
    let mut proxies = BTreeSet::new();
    for (vm, (_, peer_url)) in VMS.iter().zip(&members) {
        let etcd = settings(&cluster_file(&format!("{vm}/etcd.env")));
        let fibd = settings(&cluster_file(&format!("{vm}/fibd.env")));
        let socket = settings(&cluster_file(&format!("{vm}/fibd.socket.d/listen.conf")));
        // The member is the one the initial cluster names, on one address.
        assert_eq!(setting(&etcd, "ETCD_NAME"), *vm);
        assert_eq!(setting(&etcd, "ETCD_INITIAL_ADVERTISE_PEER_URLS"), peer_url);
        assert_eq!(setting(&etcd, "ETCD_LISTEN_PEER_URLS"), peer_url);
        let host = url_host(peer_url);
        let client_url = setting(&etcd, "ETCD_ADVERTISE_CLIENT_URLS");
        assert_eq!(url_host(client_url), host, "{vm}");
        assert!(
            setting(&etcd, "ETCD_LISTEN_CLIENT_URLS")
                .split(',')
                .any(|u| u == client_url),
            "{vm} does not listen where it advertises"
        );
        client_urls.insert(client_url.to_owned());
        // fibd: etcd mode on the shared cluster name, all three members, the
        // local one first, a node name of its own.
        assert_eq!(setting(&fibd, "FIBD_STORE"), "etcd");
        assert_eq!(setting(&fibd, "FIBD_CLUSTER_NAME"), "prod");
        let endpoints: Vec<&str> = setting(&fibd, "FIBD_ETCD_ENDPOINTS").split(',').collect();
        assert_eq!(endpoints[0], client_url, "{vm}: the local member first");
        assert_eq!(
            endpoints.iter().copied().collect::<BTreeSet<_>>().len(),
            3,
            "{vm}"
        );
        let allowed = fibd_dropin
            .lines()
            .find_map(|l| l.strip_prefix("IPAddressAllow="))
            .expect("IPAddressAllow= in the fibd drop-in");
        for endpoint in &endpoints {
            assert!(
                allowed.split_whitespace().any(|a| a == url_host(endpoint)),
                "the sandbox does not let fibd reach {endpoint}"
            );
        }
        node_names.insert(setting(&fibd, "FIBD_NODE_NAME").to_owned());
        proxies.insert(setting(&fibd, "FIBD_TRUSTED_PROXIES").to_owned());
        // The socket listens on the VM's address, where both balancers send.
        let listen = setting(&socket, "ListenStream");
        assert_eq!(listen, format!("{host}:8080"), "{vm}");
        assert_eq!(
            nginx.matches(&format!("server {listen} ")).count(),
            2,
            "{listen} in both nginx upstreams"
        );
        assert_eq!(
            haproxy.matches(&format!("server {vm} {listen}\n")).count(),
            2,
            "{vm} in both HAProxy backends"
        );
    }
    let endpoints: BTreeSet<String> = setting(
        &settings(&cluster_file("vm1/fibd.env")),
        "FIBD_ETCD_ENDPOINTS",
    )
    .split(',')
    .map(str::to_owned)
    .collect();
    assert_eq!(endpoints, client_urls, "fibd's endpoints are the members");
    assert_eq!(
        node_names.len(),
        3,
        "node names must differ: {node_names:?}"
    );
    assert_eq!(proxies.len(), 1, "one balancer: {proxies:?}");
    assert!(fibd_dropin.contains("EnvironmentFile=/etc/default/fibd"));
    // The relays' secret, as a credential the dynamic user can read.
    assert!(fibd_dropin.contains("LoadCredential=cluster-secret:/etc/fibd/cluster-secret"));
    assert!(fibd_dropin.contains("Environment=FIBD_CLUSTER_SECRET_FILE=%d/cluster-secret"));
    for dependency in ["Wants=etcd.service", "After=etcd.service"] {
        assert!(fibd_dropin.contains(dependency), "{dependency}");
    }
}

/// A directory systemd-analyze reads as a unit path: fibd's units (ExecStart=
/// the binary cargo built), Debian's etcd.service, and one VM's drop-ins.
/// `extra` is appended to every drop-in.
fn cluster_unit_dir(vm: &str, extra: &str) -> DataDir {
    let dir = DataDir::new(&format!("cluster-units-{vm}"));
    let root = dir.path();
    let service =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/fibd.service"))
            .expect("systemd/fibd.service")
            .replace(
                "ExecStart=/usr/local/bin/fibd",
                &format!("ExecStart={}", env!("CARGO_BIN_EXE_fibd")),
            );
    let socket =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/fibd.socket"))
            .expect("systemd/fibd.socket");
    let etcd = std::fs::read_to_string("/lib/systemd/system/etcd.service")
        .expect("Debian's etcd.service (apt-get install etcd-server)");
    let dropins = [
        (
            "fibd.service.d/cluster.conf",
            cluster_file("common/fibd.service.d/cluster.conf"),
        ),
        (
            "fibd.socket.d/listen.conf",
            cluster_file(&format!("{vm}/fibd.socket.d/listen.conf")),
        ),
        (
            "etcd.service.d/fibd-cluster.conf",
            cluster_file("common/etcd.service.d/fibd-cluster.conf"),
        ),
    ];
    for (name, text) in [
        ("fibd.service", service),
        ("fibd.socket", socket),
        ("etcd.service", etcd),
    ] {
        std::fs::create_dir_all(root.join(format!("{name}.d"))).expect("unit dir");
        std::fs::write(root.join(name), text).expect("write unit");
    }
    for (name, text) in dropins {
        std::fs::write(root.join(name), format!("{text}{extra}")).expect("write drop-in");
    }
    dir
}

/// systemd-analyze verify on the three units of `dir`: everything it said.
fn verify_units(dir: &DataDir) -> String {
    let units: Vec<String> = ["fibd.service", "fibd.socket", "etcd.service"]
        .iter()
        .map(|u| dir.path().join(u).display().to_string())
        .collect();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        if output.status.success() {
            String::new()
        } else {
            format!("exit status {}", output.status)
        }
    )
}

#[test]
#[ignore = "needs systemd-analyze and etcd-server: run scripts/test"]
fn cluster_units_with_their_drop_ins_verify_clean() {
    // The drop-ins are read from where they are put: a bad key planted in
    // each is reported, with the drop-in's path.
    let planted = cluster_unit_dir("vm1", "NoSuchSetting=1\n");
    let said = verify_units(&planted);
    for dropin in [
        "fibd.service.d/cluster.conf",
        "fibd.socket.d/listen.conf",
        "etcd.service.d/fibd-cluster.conf",
    ] {
        assert!(
            said.lines()
                .any(|l| l.contains(dropin) && l.contains("NoSuchSetting")),
            "{dropin} was not read:\n{said}"
        );
    }
    for vm in VMS {
        let dir = cluster_unit_dir(vm, "");
        let said = verify_units(&dir);
        assert!(
            said.trim().is_empty(),
            "{vm}: systemd-analyze verify:\n{said}"
        );
    }
}

/// `deploy/cluster/nginx.conf` with the three nodes' addresses, loopback
/// ports and a test certificate in place of the example's.
fn cluster_nginx_site(nodes: &[&Fibd], https_port: u16, http_port: u16, dir: &Path) -> String {
    let (cert, key) = self_signed_certificate(dir);
    let mut substitutions: Vec<(String, String, usize)> = vec![
        (
            "listen 443 ssl http2;".into(),
            format!("listen 127.0.0.1:{https_port} ssl http2;"),
            1,
        ),
        ("listen [::]:443 ssl http2;".into(), String::new(), 1),
        (
            "listen 80;".into(),
            format!("listen 127.0.0.1:{http_port};"),
            1,
        ),
        ("listen [::]:80;".into(), String::new(), 1),
        (
            "/etc/ssl/certs/fibd.example.org.pem".into(),
            cert.display().to_string(),
            1,
        ),
        (
            "/etc/ssl/private/fibd.example.org.key".into(),
            key.display().to_string(),
            1,
        ),
    ];
    for (i, node) in nodes.iter().enumerate() {
        substitutions.push((format!("10.0.0.{}:8080", i + 1), node.addr.to_string(), 2));
    }
    let mut site = cluster_file("nginx.conf");
    for (from, to, count) in substitutions {
        assert_eq!(site.matches(&from).count(), count, "{from:?} in nginx.conf");
        site = site.replace(&from, &to);
    }
    site
}

/// One curl request from the loopback address `source`: status and body.
fn curl(source: &str, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["--silent", "--insecure", "--max-time", "30"]);
    command.args(["--interface", source, "--request", method]);
    command.args(["--write-out", "\n%{http_code}"]);
    if let Some(body) = body {
        command.args(["--header", "Content-Type: application/json", "--data", body]);
    }
    let output = command.arg(url).output().expect("run curl");
    assert!(output.status.success(), "curl {url}: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    (status.parse().expect("a status code"), body.to_owned())
}

/// The /current requests a node answered 200, from its own /metrics.
fn currents_served(node: &Fibd) -> u64 {
    let series = "fibd_requests_total{route=\"/current\",code=\"200\"} ";
    node.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map_or(0, |v| v.parse().expect("a counter"))
}

#[test]
#[ignore = "needs nginx, curl and openssl: run scripts/test"]
fn cluster_nginx_spreads_requests_fails_over_and_keeps_primes_clients_on_one_node() {
    // Three real fibd processes stand in for the three VMs. This checks the
    // balancer's routing, not the shared index: each node here has its own
    // LMDB store (the cluster tests run the nodes on etcd).
    let data: Vec<DataDir> = VMS.iter().map(|vm| DataDir::new(vm)).collect();
    let mut nodes: Vec<Option<Fibd>> = data.iter().map(|d| Some(Fibd::start(d, &[]))).collect();
    let (https_port, http_port) = (free_port(), free_port());
    let certs = DataDir::new("cluster-nginx-certs");
    std::fs::create_dir_all(certs.path()).expect("cert dir");
    let running: Vec<&Fibd> = nodes.iter().flatten().collect();
    let site = cluster_nginx_site(&running, https_port, http_port, certs.path());
    let _nginx = Nginx::start(&site, &[https_port, http_port]);
    let base = format!("https://127.0.0.1:{https_port}");

    // Round robin: 30 reads, 10 on each node.
    for _ in 0..30 {
        assert_eq!(
            curl("127.0.0.2", "GET", &format!("{base}/current"), None).0,
            200
        );
    }
    let served: Vec<u64> = nodes.iter().flatten().map(currents_served).collect();
    assert_eq!(served, [10, 10, 10], "requests per node");

    // kill -9 the second node: every request still gets an answer, from the
    // other two (refused connection, next node).
    nodes[1].take().expect("node 2").kill9();
    for _ in 0..30 {
        assert_eq!(
            curl("127.0.0.2", "GET", &format!("{base}/current"), None).0,
            200
        );
    }
    let served: Vec<u64> = nodes.iter().flatten().map(currents_served).collect();
    // The survivors' first 20 and all 30 of these.
    assert_eq!(served.iter().sum::<u64>(), 50, "{served:?}");
    assert!(
        served.iter().all(|&n| n > 10),
        "both survivors served: {served:?}"
    );

    // Primes tasks live on the node that accepted them; each client keeps
    // reaching that node, so its polls find the task every time (another
    // node would answer 404).
    for source in ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        let (status, body) = curl(
            source,
            "POST",
            &format!("{base}/v1/primes/tasks"),
            Some(r#"{"n": 100}"#),
        );
        assert_eq!(status, 202, "{body}");
        let task: serde_json::Value = serde_json::from_str(&body).expect("task JSON");
        let id = task["request_id"].as_str().expect("request_id");
        for _ in 0..6 {
            let (status, body) = curl(source, "GET", &format!("{base}/v1/primes/tasks/{id}"), None);
            assert_eq!(status, 200, "{source} polling {id}: {body}");
        }
    }
}

#[test]
fn cluster_env_files_are_configuration_fibd_accepts() {
    for vm in VMS {
        let env = settings(&cluster_file(&format!("{vm}/fibd.env")));
        // Every variable is one fibd reads (a misspelt name would be
        // ignored without a word).
        for key in env.keys() {
            assert!(
                fibd::config::HELP.contains(&format!("[env {key}")),
                "{vm}/fibd.env: fibd --help names no {key}"
            );
        }
        // fibd starts with these values, in cluster mode. The members are
        // loopback ports where nothing listens, so it cannot be ready.
        let dead: Vec<String> = (0..3)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let dead = dead.join(",");
        // The secret comes from the drop-in's credential, as under systemd.
        let secret =
            std::env::temp_dir().join(format!("fibd-deploy-secret-{}", std::process::id()));
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").expect("write the secret");
        let secret = secret.to_string_lossy().into_owned();
        let vars: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| match k.as_str() {
                "FIBD_ETCD_ENDPOINTS" => (k.as_str(), dead.as_str()),
                _ => (k.as_str(), v.as_str()),
            })
            .chain([("FIBD_CLUSTER_SECRET_FILE", secret.as_str())])
            .collect();
        let data = DataDir::new(&format!("cluster-env-{vm}"));
        let node = Fibd::start_with(&data, &[], &vars);
        assert_eq!(node.get("/healthz").status, 200, "{vm}");
        // On LMDB it would be ready at once: 503 is the etcd store waiting.
        assert_eq!(node.get("/readyz").status, 503, "{vm}: ready without etcd");
    }
}
