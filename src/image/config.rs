//! The image configuration (the blob a manifest's `config` points to), with every field Docker
//! and OCI define, and the canonical JSON writer used for everything kiln digests.
//!
//! Fields are omitted when empty, as Go's `omitempty` does in BuildKit's config type; `null`
//! collections (written by old Docker versions) read as empty. Fields this struct does not know
//! (Docker's `container_config`, `docker_version`, `Hostname`…) are kept in the `extra` maps and
//! written back, so a loaded config re-serialises without loss.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::layer::DiffId;

/// `null` reads as the type's default (an empty collection).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The value `{}` of Docker's `map[string]struct{}` (`ExposedPorts`, `Volumes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// An image configuration (`application/vnd.oci.image.config.v1+json`, also Docker's
/// `application/vnd.docker.container.image.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time, RFC 3339 (see [`format_rfc3339`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author (`MAINTAINER`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// CPU architecture, Go's `GOARCH` names (`amd64`, `arm64`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// CPU variant (`v8`, `v7`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// The defaults for a container run from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layers' diffIDs.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per Dockerfile step, including those without a layer (`empty_layer`).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    /// Fields not listed above (`os.version`, `container_config`, `docker_version`…), kept as
    /// they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `config` object: how to run the image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `EXPOSE`: `"80/tcp"` → `{}`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// `ENV`, as `KEY=value`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    /// `ENTRYPOINT`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub entrypoint: Vec<String>,
    /// `CMD`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cmd: Vec<String>,
    /// `VOLUME`: path → `{}`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `LABEL`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Whether `Cmd`/`Entrypoint` are already escaped (Windows).
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_escaped: bool,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    /// `SHELL`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
    /// Other fields (Docker's `Hostname`, `AttachStdin`, `Image`, `StopTimeout`…), kept as they
    /// were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `HEALTHCHECK`. Durations are integer nanoseconds, as Docker writes Go's `time.Duration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `[]` inherit, `["NONE"]` disabled, `["CMD", args…]`, `["CMD-SHELL", command]`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    /// Time between checks, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Time before a check is considered hung, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Start period for the container to initialise, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    /// Time between checks during the start period, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    /// Consecutive failures needed to report unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Other fields, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `rootfs`: the layers' diffIDs, base first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each uncompressed layer tar.
    #[serde(default, deserialize_with = "nullable")]
    pub diff_ids: Vec<DiffId>,
    /// Other fields, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// When the step ran, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, as Docker prints it (`RUN /bin/sh -c make`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    /// Author.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// Comment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub empty_layer: bool,
    /// Other fields, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageConfig {
    /// An empty config for this platform.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> ImageConfig {
        ImageConfig {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.unwrap_or_default().to_string(),
            ..ImageConfig::default()
        }
    }

    /// Parses a config blob.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<ImageConfig> {
        serde_json::from_slice(bytes)
    }

    /// The canonical bytes of this config (what kiln stores and digests).
    pub fn to_canonical_json(&self) -> Vec<u8> {
        canonical_json(self).expect("an image config always serialises")
    }

    /// The `config` object, created empty if absent.
    pub fn container_config_mut(&mut self) -> &mut ContainerConfig {
        self.config.get_or_insert_with(ContainerConfig::default)
    }

    /// Appends a layer: its diffID and a history entry.
    pub fn push_layer(&mut self, diff_id: DiffId, history: History) {
        self.rootfs.diff_ids.push(diff_id);
        self.history.push(History {
            empty_layer: false,
            ..history
        });
    }

    /// Number of history entries that made a layer.
    pub fn non_empty_history(&self) -> usize {
        self.history.iter().filter(|h| !h.empty_layer).count()
    }
}

/// Serialises `value` as canonical JSON: object keys sorted (byte-wise), no whitespace, strings
/// with serde_json's minimal escaping, integers as integers. The same value gives the same bytes
/// on every run and machine; this is THE writer for every JSON document kiln digests (configs,
/// manifests, indexes).
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let v = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_value(&v, &mut out)?;
    Ok(out)
}

fn write_value(v: &Value, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match v {
        Value::Object(m) => {
            // Sort explicitly: serde_json's map order depends on its `preserve_order` feature.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_value(&m[k], out)?;
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(x, out)?;
            }
            out.push(b']');
        }
        Value::Number(n) => {
            if n.is_f64() {
                // Floats have no single canonical form; none of kiln's documents use them, so
                // refuse rather than write bytes that could differ elsewhere.
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 || !f.is_finite() || f.abs() >= 9.007_199_254_740_992e15 {
                    return Err(serde::ser::Error::custom(
                        "canonical JSON: non-integer numbers are not supported",
                    ));
                }
                write!(out, "{}", f as i64).map_err(serde_json::Error::io)?;
            } else {
                write!(out, "{n}").map_err(serde_json::Error::io)?;
            }
        }
        other => serde_json::to_writer(&mut *out, other)?,
    }
    Ok(())
}

/// Formats seconds since the Unix epoch as RFC 3339 in UTC: `2024-01-02T03:04:05Z`.
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The current time as seconds since the epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config as Docker (classic builder) writes it: nulls, v1 fields, unknown fields.
    const DOCKER_CONFIG: &str = r#"{
      "architecture": "amd64",
      "config": {
        "Hostname": "", "Domainname": "", "User": "app", "AttachStdin": false,
        "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
        "Tty": false, "Env": ["PATH=/usr/bin", "A=b"],
        "Cmd": ["sh", "-c", "echo hi"],
        "Healthcheck": {"Test": ["CMD-SHELL", "curl -f http://localhost/"],
                        "Interval": 30000000000, "Timeout": 5000000000,
                        "StartPeriod": 1000000000, "StartInterval": 2000000000, "Retries": 3},
        "ArgsEscaped": true,
        "Image": "sha256:0000", "Volumes": {"/data": {}}, "WorkingDir": "/srv",
        "Entrypoint": null, "OnBuild": ["RUN echo child"], "Labels": {"b": "2", "a": "1"},
        "StopSignal": "SIGTERM", "StopTimeout": 10, "Shell": ["/bin/bash", "-c"]
      },
      "container": "abc",
      "container_config": {"Cmd": ["/bin/sh"]},
      "created": "2024-01-02T03:04:05.123456789Z",
      "docker_version": "20.10.7",
      "history": [
        {"created": "2024-01-02T03:04:05Z", "created_by": "/bin/sh -c #(nop) ADD file:x in /"},
        {"created": "2024-01-02T03:04:06Z", "created_by": "/bin/sh -c #(nop) CMD [\"sh\"]",
         "empty_layer": true, "x-extra": 1}
      ],
      "os": "linux",
      "os.version": "5.0",
      "rootfs": {"type": "layers", "diff_ids": [
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
      "variant": "v8"
    }"#;

    #[test]
    fn docker_config_round_trips_without_loss() {
        let c: ImageConfig = serde_json::from_str(DOCKER_CONFIG).unwrap();
        let cc = c.config.as_ref().unwrap();
        assert_eq!(cc.user, "app");
        assert_eq!(cc.exposed_ports.len(), 2);
        assert_eq!(cc.entrypoint, Vec::<String>::new());
        assert_eq!(cc.on_build, ["RUN echo child"]);
        assert_eq!(cc.shell, ["/bin/bash", "-c"]);
        assert!(cc.args_escaped);
        let hc = cc.healthcheck.as_ref().unwrap();
        assert_eq!(hc.interval, Some(30_000_000_000));
        assert_eq!(hc.start_interval, Some(2_000_000_000));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(cc.extra["Hostname"], Value::String(String::new()));
        assert_eq!(cc.extra["StopTimeout"], Value::from(10));
        assert_eq!(c.extra["docker_version"], Value::from("20.10.7"));
        assert_eq!(c.extra["os.version"], Value::from("5.0"));
        assert_eq!(c.history[1].extra["x-extra"], Value::from(1));
        assert!(c.history[1].empty_layer);
        assert_eq!(c.variant, "v8");

        // Re-serialised: every field of the input is there with its value, except the nulls
        // (Docker's omitempty equivalent).
        let mut orig: Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
        orig["config"].as_object_mut().unwrap().remove("Entrypoint");
        let again: Value = serde_json::from_slice(&c.to_canonical_json()).unwrap();
        assert_eq!(again, orig);

        // And parsing the output gives the same struct.
        let c2 = ImageConfig::from_slice(&c.to_canonical_json()).unwrap();
        assert_eq!(c2, c);
    }

    #[test]
    fn empty_fields_are_omitted() {
        let mut c = ImageConfig::new("linux", "amd64", None);
        c.created = Some(format_rfc3339(0));
        c.container_config_mut().cmd = vec!["sh".into()];
        let s = String::from_utf8(c.to_canonical_json()).unwrap();
        assert_eq!(
            s,
            r#"{"architecture":"amd64","config":{"Cmd":["sh"]},"created":"1970-01-01T00:00:00Z","os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#
        );
    }

    #[test]
    fn canonical_json_is_sorted_and_stable() {
        let mut m = std::collections::HashMap::new();
        for i in 0..50 {
            m.insert(format!("k{i}"), vec![i, i + 1]);
        }
        let a = canonical_json(&m).unwrap();
        let b = canonical_json(&m.clone()).unwrap();
        assert_eq!(a, b);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 50);
        assert!(a.starts_with(br#"{"k0":[0,1],"k1":[1,2],"k10":[10,11]"#));
        let nested =
            serde_json::json!({"b": {"z": 1, "a": [{"y": "\"q\"\n", "x": null}]}, "a": true});
        assert_eq!(
            canonical_json(&nested).unwrap(),
            br#"{"a":true,"b":{"a":[{"x":null,"y":"\"q\"\n"}],"z":1}}"#
        );
        assert!(canonical_json(&1.5f64).is_err());
        assert_eq!(canonical_json(&2.0f64).unwrap(), b"2");
        // A known digest: the same input gives these bytes on any machine.
        let c = ImageConfig::new("linux", "arm64", Some("v8"));
        assert_eq!(
            crate::layer::DiffId::of(&c.to_canonical_json()).hex(),
            hex::encode(sha2::Sha256::digest(
                br#"{"architecture":"arm64","os":"linux","rootfs":{"diff_ids":[],"type":"layers"},"variant":"v8"}"#
            ))
        );
        use sha2::Digest as _;
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
