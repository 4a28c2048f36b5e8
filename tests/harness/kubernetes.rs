//! The suite's Kubernetes control plane, and what each test makes in it.
//!
//! One real cluster serves the whole run: `ops/test.sh` starts it with
//! `ops/kubernetes/cluster.sh up` (etcd, kube-apiserver, controller-manager and scheduler built
//! from Kubernetes' own modules) and stops it afterwards. Tests never share objects in it: each
//! makes namespaces of its own, named uniquely, and deletes them when it ends. The orchestrator
//! side of a test signs in as the chart's ServiceAccount with the Role the chart grants, both
//! rendered by real helm; the admin credential is only for setting up and for reading back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use super::{unique, TempDir, DEADLINE};

/// The field manager the harness writes its set-up objects with.
const HARNESS_MANAGER: &str = "pumphouse-test-harness";

/// The running test cluster, as `ops/kubernetes/cluster.sh up` left it.
#[derive(Debug, Clone)]
pub struct KubeCluster {
    /// The cluster's directory: kubeconfigs, certificates, logs.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Where the built components (and helm) are.
    pub bin: PathBuf,
    /// The address of the node `ops/kubernetes/node.sh` joined, if one did.
    node_ip: Option<String>,
    /// etcd's client URL (`http://127.0.0.1:PORT`), for a test that compacts its history.
    pub etcd: String,
}

impl KubeCluster {
    /// The cluster `ops/test.sh` started; fails loudly, with the commands that start one, when
    /// there is none.
    pub fn get() -> KubeCluster {
        let fix = "ops/test.sh starts one for the suite; by hand: \
                   `ops/kubernetes/cluster.sh up target/kube-test && export PUMPHOUSE_TEST_KUBE_DIR=$PWD/target/kube-test`";
        let dir = std::env::var_os("PUMPHOUSE_TEST_KUBE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("PUMPHOUSE_TEST_KUBE_DIR is not set, so there is no Kubernetes control plane to test against; {fix}"));
        let env = std::fs::read_to_string(dir.join("env")).unwrap_or_else(|e| {
            panic!(
                "cannot read {}/env ({e}): no cluster was started there; {fix}",
                dir.display()
            )
        });
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{}/env has no {name}; {fix}", dir.display()))
                .to_string()
        };
        let node_ip = env
            .lines()
            .find_map(|l| l.strip_prefix("PUMPHOUSE_TEST_KUBE_NODE_IP="))
            .map(str::to_string);
        KubeCluster {
            server: var("PUMPHOUSE_TEST_KUBE_SERVER"),
            etcd: var("PUMPHOUSE_TEST_KUBE_ETCD"),
            bin: PathBuf::from(var("PUMPHOUSE_TEST_KUBE_BIN")),
            dir,
            node_ip,
        }
    }

    /// The address of the cluster's node, where pods reach the host; fails loudly when no node
    /// has joined.
    pub fn node_ip(&self) -> &str {
        self.node_ip.as_deref().unwrap_or_else(|| {
            panic!(
                "no node has joined the cluster in {}, so no pod can run; ops/test.sh joins one; by hand: \
                 `ops/kubernetes/node.sh up {0} && ops/kubernetes/node.sh import {0} pumphouse/pump:dev`",
                self.dir.display()
            )
        })
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A client signed in as cluster admin.
    pub async fn admin(&self) -> Client {
        client_from(&self.admin_kubeconfig()).await
    }

    /// `helm` from the build, pointed at this cluster as admin, its caches in `home`.
    pub fn helm(&self, home: &Path) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        cmd.env("KUBECONFIG", self.admin_kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .current_dir(repo());
        cmd
    }

    /// A new namespace of this test's, deleted when dropped. `restricted` makes PodSecurity
    /// enforce the restricted profile in it, as the chart's documentation asks of the pumps'
    /// namespace.
    pub async fn namespace(&self, prefix: &str, restricted: bool) -> TestNamespace {
        let name = unique(prefix);
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        if restricted {
            ns.metadata.labels = Some(
                [
                    ("pod-security.kubernetes.io/enforce", "restricted"),
                    ("pod-security.kubernetes.io/enforce-version", "latest"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            );
        }
        Api::<Namespace>::all(self.admin().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        TestNamespace {
            name,
            kubeconfig: self.admin_kubeconfig(),
        }
    }

    /// The chart's ServiceAccount, Role and RoleBinding, rendered by `helm template` for a
    /// release in `release_ns` whose pumps run in `pumps_ns`, applied as admin after `edit` had
    /// its say over the Role; then a client signed in as that ServiceAccount with a short-lived
    /// token, once the API server's authorizer has seen the binding.
    pub async fn chart_account(
        &self,
        release_ns: &str,
        pumps_ns: &str,
        edit: impl FnOnce(&mut Role),
    ) -> ChartAccount {
        let home = TempDir::new("pumphouse-helm");
        let out = self
            .helm(&home.0)
            .args([
                "template",
                "pumphouse",
                "charts/pumphouse",
                "--namespace",
                release_ns,
            ])
            .args(["--set", &format!("pumps.namespace={pumps_ns}")])
            .args(["--show-only", "templates/serviceaccount.yaml"])
            .args(["--show-only", "templates/role.yaml"])
            .args(["--show-only", "templates/rolebinding.yaml"])
            .output()
            .expect("running helm template");
        assert!(
            out.status.success(),
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).expect("helm prints UTF-8");
        let mut account = None;
        let mut role = None;
        let mut binding = None;
        for doc in serde_yaml::Deserializer::from_str(&rendered) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).expect("helm renders YAML");
            match value["kind"].as_str() {
                Some("ServiceAccount") => {
                    account = Some(serde_json::from_value::<ServiceAccount>(value).unwrap())
                }
                Some("Role") => role = Some(serde_json::from_value::<Role>(value).unwrap()),
                Some("RoleBinding") => {
                    binding = Some(serde_json::from_value::<RoleBinding>(value).unwrap())
                }
                _ => {}
            }
        }
        let account = account.expect("the chart renders a ServiceAccount");
        let mut role = role.expect("the chart renders a Role");
        let binding = binding.expect("the chart renders a RoleBinding");
        edit(&mut role);

        let admin = self.admin().await;
        let ssa = PatchParams::apply(HARNESS_MANAGER).force();
        let name = account.metadata.name.clone().unwrap();
        Api::<ServiceAccount>::namespaced(admin.clone(), release_ns)
            .patch(&name, &ssa, &Patch::Apply(&account))
            .await
            .expect("applying the chart's ServiceAccount");
        Api::<Role>::namespaced(admin.clone(), pumps_ns)
            .patch(
                role.metadata.name.as_deref().unwrap(),
                &ssa,
                &Patch::Apply(&role),
            )
            .await
            .expect("applying the chart's Role");
        Api::<RoleBinding>::namespaced(admin.clone(), pumps_ns)
            .patch(
                binding.metadata.name.as_deref().unwrap(),
                &ssa,
                &Patch::Apply(&binding),
            )
            .await
            .expect("applying the chart's RoleBinding");

        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(admin, release_ns)
            .create_token_request(&name, &PostParams::default(), &request)
            .await
            .expect("a token for the chart's ServiceAccount")
            .status
            .expect("a TokenRequest answers with a status")
            .token;

        let dir = TempDir::new("pumphouse-sa");
        let kubeconfig = dir.0.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context:\n    cluster: test\n    user: sa\n    namespace: {pumps_ns}\ncurrent-context: sa\n",
                self.server,
                self.dir.join("pki/ca.crt").display()
            ),
        )
        .expect("writing the ServiceAccount's kubeconfig");
        let client = client_from(&kubeconfig).await;
        let account = ChartAccount {
            user: format!("system:serviceaccount:{release_ns}:{name}"),
            client,
            kubeconfig,
            role,
            _dir: dir,
            _home: home,
        };
        // The authorizer learns of new bindings through an informer; wait until it has.
        account
            .wait_allowed(pumps_ns, "list", "apps", "deployments", true)
            .await;
        account
    }
}

/// A ServiceAccount of the chart's, and a client signed in as it.
pub struct ChartAccount {
    /// `system:serviceaccount:NS:NAME`, as the API server names it in a 403.
    pub user: String,
    pub client: Client,
    /// A kubeconfig with its token, for an orchestrator process.
    pub kubeconfig: PathBuf,
    /// The Role as applied.
    pub role: Role,
    _dir: TempDir,
    _home: TempDir,
}

impl ChartAccount {
    /// Waits until the API server's authorizer answers `allowed` for the verb, as RBAC changes
    /// reach it a moment after they are written.
    pub async fn wait_allowed(
        &self,
        ns: &str,
        verb: &str,
        group: &str,
        resource: &str,
        allowed: bool,
    ) {
        let api = Api::<SelfSubjectAccessReview>::all(self.client.clone());
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.to_string()),
                    verb: Some(verb.to_string()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let started = Instant::now();
        loop {
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .expect("a SelfSubjectAccessReview");
            if answer.status.map(|s| s.allowed) == Some(allowed) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the API server still answers allowed={} for {verb} {resource} in {ns}",
                !allowed
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A namespace of one test's; deleted, with everything in it, when dropped.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: namespace {}", self.name);
            return;
        }
        // Drop cannot await, and the test's runtime may be gone: a runtime of its own.
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let client = client_from(&kubeconfig).await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}

/// A TCP relay in front of the API server whose connections a test cuts, as a network
/// partition would, and restores. TLS passes through it untouched (the serving certificate
/// names 127.0.0.1, which the relay listens on too).
pub struct ApiProxy {
    /// The kubeconfig given, pointed at the relay.
    pub kubeconfig: PathBuf,
    addr: std::net::SocketAddr,
    upstream: String,
    /// The accept loop, when open, and every relayed connection.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    _dir: TempDir,
}

impl ApiProxy {
    /// A relay on loopback to the cluster's API server, open, and a copy of `kubeconfig` that
    /// uses it.
    pub async fn start(cluster: &KubeCluster, kubeconfig: &Path) -> ApiProxy {
        Self::start_on(cluster, kubeconfig, "127.0.0.1").await
    }

    /// A relay listening on `host` (one of this machine's addresses, the node's for a pod).
    pub async fn start_on(cluster: &KubeCluster, kubeconfig: &Path, host: &str) -> ApiProxy {
        let listener = tokio::net::TcpListener::bind((host, 0))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {host}: {e}"));
        let addr = listener.local_addr().expect("its address");
        let text = std::fs::read_to_string(kubeconfig).expect("the kubeconfig");
        assert!(
            text.contains(&cluster.server),
            "{} does not name {}",
            kubeconfig.display(),
            cluster.server
        );
        let dir = TempDir::new("pumphouse-api-proxy");
        let path = dir.0.join("kubeconfig");
        std::fs::write(
            &path,
            text.replace(&cluster.server, &format!("https://{addr}")),
        )
        .expect("writing the relay's kubeconfig");
        let upstream = cluster.server.trim_start_matches("https://").to_string();
        let proxy = ApiProxy {
            kubeconfig: path,
            addr,
            upstream,
            tasks: Arc::new(Mutex::new(Vec::new())),
            _dir: dir,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (tasks, upstream) = (self.tasks.clone(), self.upstream.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().expect("relay tasks").push(conn.abort_handle());
            }
        });
        self.tasks
            .lock()
            .expect("relay tasks")
            .push(accept.abort_handle());
    }

    /// Closes every relayed connection and the listening port: the API server is unreachable
    /// (connections refused) until [`ApiProxy::restore`].
    pub fn cut(&self) {
        for task in self.tasks.lock().expect("relay tasks").drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let started = Instant::now();
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                // The aborted accept loop may not have dropped its socket yet.
                Err(e) => {
                    assert!(
                        started.elapsed() < DEADLINE,
                        "cannot listen on {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }

    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let file = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("using {}: {e}", kubeconfig.display()));
    Client::try_from(config).expect("a kube client")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
