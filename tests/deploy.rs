//! The deploy files (issue 16) checked as far as this machine can: the systemd unit with
//! `systemd-analyze verify`, the Kubernetes manifests parsed and cross-checked against what
//! `faultline testnet --hosts` generates, the Dockerfile's shape.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::BIN;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy("faultline.service")).expect("unit");
    assert!(unit.contains("Restart=on-failure") && unit.contains("LimitNOFILE="));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    // Verify against the binary cargo built (the unit names its installed path).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("faultline.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/faultline", BIN)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_as_non_root() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).expect("Dockerfile");
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(froms, 2, "a build stage and a runtime stage");
    assert!(
        text.contains("COPY --from=build"),
        "only the binary is copied over"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "runs as a non-root user"
    );
}

fn kinds<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

#[test]
fn the_kubernetes_manifests_describe_a_four_node_pbft_cluster_testnet_can_configure() {
    let text = std::fs::read_to_string(deploy("kubernetes/faultline-pbft.yaml")).expect("yaml");
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let sts = kinds(&docs, "StatefulSet");
    assert_eq!(sts.len(), 1);
    let sts = sts[0];
    assert_eq!(sts["spec"]["replicas"].as_i64(), Some(4));
    let name = sts["metadata"]["name"].as_str().expect("name");
    let service_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let services = kinds(&docs, "Service");
    let headless = services
        .iter()
        .find(|s| s["metadata"]["name"].as_str() == Some(service_name))
        .expect("the StatefulSet's governing Service");
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    // One stable address per node, selecting exactly that pod.
    for i in 0..4 {
        let pod = format!("{name}-{i}");
        assert!(
            services.iter().any(|s| {
                s["spec"]["selector"]["statefulset.kubernetes.io/pod-name"].as_str()
                    == Some(pod.as_str())
            }),
            "no Service for {pod}"
        );
    }
    assert_eq!(kinds(&docs, "ConfigMap").len(), 1);

    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.windows(2).any(|w| w == ["--listen", "0.0.0.0"]));
    let config = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("--config");
    let ports: Vec<i64> = container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [7000, 7001]);

    // The files `testnet --hosts ... --base-port 7000` writes fit: the same two ports on every
    // node, and node.toml's relative paths match the layout the init container builds.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["testnet", "--protocol", "pbft", "--nodes", "4"])
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--hosts",
            "10.96.0.10,10.96.0.11,10.96.0.12,10.96.0.13",
            "--base-port",
            "7000",
        ])
        .output()
        .expect("testnet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("cluster.toml")).expect("read"))
            .expect("cluster.toml");
    for (i, node) in cluster["node"]
        .as_array()
        .expect("[[node]]")
        .iter()
        .enumerate()
    {
        assert_eq!(
            node["p2p"].as_str(),
            Some(format!("/ip4/10.96.0.1{i}/tcp/7000").as_str())
        );
        assert_eq!(
            node["api"].as_str(),
            Some(format!("10.96.0.1{i}:7001").as_str())
        );
    }
    let node: toml::Table = toml::from_str(
        &std::fs::read_to_string(dir.path().join("node-0/node.toml")).expect("read"),
    )
    .expect("node.toml");
    let init = pod["initContainers"][0]["command"][2]
        .as_str()
        .expect("init script");
    let node_dir = Path::new(config).parent().expect("config dir");
    let cluster_at = node_dir.join(node["cluster"].as_str().expect("cluster"));
    let key_at = node_dir.join(node["key_file"].as_str().expect("key_file"));
    assert!(
        init.contains("/var/lib/faultline/cluster.toml")
            && cluster_at == Path::new("/var/lib/faultline/node/../cluster.toml"),
        "cluster.toml is not where node.toml looks for it"
    );
    assert!(
        init.contains(key_at.to_str().expect("utf-8")),
        "the init container does not put the key at {}",
        key_at.display()
    );
}
