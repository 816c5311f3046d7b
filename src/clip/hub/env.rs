//! The hub settings as the Python client (`huggingface_hub`) reads them
//! from the environment: the endpoint, the cache directory (`HF_HOME`,
//! `HF_HUB_CACHE`, `XDG_CACHE_HOME`, `~`), offline mode and the token
//! (`HF_TOKEN`, or the file `hf auth login` writes), which is never shown.

use std::path::PathBuf;

use hf_hub::api::sync::ApiError;

/// The hub settings, read from the environment as `huggingface_hub` reads
/// them. `Debug` names the token's source, never its value.
#[derive(Clone)]
pub struct HubEnv {
    /// `HF_ENDPOINT` without trailing slashes; `None`: the hub itself.
    pub endpoint: Option<String>,
    /// Where the cache lives (the directory holding `models--org--name`).
    pub cache_dir: PathBuf,
    /// Use the cache only.
    pub offline: bool,
    token: Option<Token>,
}

#[derive(Clone)]
struct Token {
    value: String,
    /// Where it came from, for messages: an environment variable or a file.
    source: String,
}

impl std::fmt::Debug for HubEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEnv")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("token", &self.token_source())
            .finish()
    }
}

/// `huggingface_hub`'s truth values for environment variables.
fn is_true(v: Option<String>) -> bool {
    v.is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_uppercase().as_str()))
}

/// `huggingface_hub`'s `_clean_token`: no line breaks, no surrounding
/// spaces, and empty means none.
fn clean_token(t: &str) -> Option<String> {
    let t = t.replace(['\r', '\n'], "");
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl HubEnv {
    /// From the process environment. `cache_dir`: an explicit
    /// `clip.cache_dir`, which wins over the environment; `offline`:
    /// `clip.offline`.
    pub fn from_env(cache_dir: Option<PathBuf>, offline: bool) -> Self {
        Self::from_vars(|k| std::env::var(k).ok(), cache_dir, offline)
    }

    /// From the variables `var` returns (an empty value counts as unset).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        cache_dir: Option<PathBuf>,
        offline: bool,
    ) -> Self {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let home = var("HOME")
            .or_else(|| var("USERPROFILE"))
            .map(PathBuf::from);
        // os.path.expanduser: a leading `~` is the home directory.
        let expand = |p: String| -> PathBuf {
            match (p.strip_prefix('~'), &home) {
                (Some(rest), Some(h)) if rest.is_empty() || rest.starts_with('/') => {
                    h.join(rest.trim_start_matches('/'))
                }
                _ => PathBuf::from(p),
            }
        };
        let hf_home = var("HF_HOME").map(expand).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(expand)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache_dir = cache_dir.unwrap_or_else(|| {
            var("HF_HUB_CACHE")
                .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
                .map(expand)
                .unwrap_or_else(|| hf_home.join("hub"))
        });
        let token = if is_true(var("HF_HUB_DISABLE_IMPLICIT_TOKEN")) {
            None
        } else {
            // HF_TOKEN, else the older name; then the file `hf auth login` writes.
            let from_env = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
                .iter()
                .find_map(|k| var(k).map(|v| (*k, v)))
                .and_then(|(k, v)| {
                    clean_token(&v).map(|value| Token {
                        value,
                        source: k.to_string(),
                    })
                });
            from_env.or_else(|| {
                let file = var("HF_TOKEN_PATH")
                    .map(expand)
                    .unwrap_or_else(|| hf_home.join("token"));
                let text = std::fs::read_to_string(&file).ok()?;
                clean_token(&text).map(|value| Token {
                    value,
                    source: format!("the token file {}", file.display()),
                })
            })
        };
        Self {
            endpoint: var("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()),
            cache_dir,
            offline: offline
                || is_true(var("HF_HUB_OFFLINE").or_else(|| var("TRANSFORMERS_OFFLINE"))),
            token,
        }
    }

    /// Where the token came from (`HF_TOKEN`, a file), if there is one.
    pub fn token_source(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.source.as_str())
    }

    pub(super) fn hub_name(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("the hub at {e}"),
            None => "the hub".into(),
        }
    }

    pub(super) fn api(&self) -> std::result::Result<hf_hub::api::sync::Api, ApiError> {
        let mut b =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(self.cache_dir.clone()))
                .with_token(self.token.as_ref().map(|t| t.value.clone()))
                .with_progress(true);
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e.clone());
        }
        b.build()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    pub(in crate::clip::hub) fn env(vars: &[(&str, &str)], cache_dir: Option<&str>) -> HubEnv {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubEnv::from_vars(
            |k| vars.get(k).cloned(),
            cache_dir.map(PathBuf::from),
            false,
        )
    }

    /// Variables, clip.cache_dir, the cache the Python client would use.
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);

    #[test]
    fn cache_dir_follows_the_python_client() {
        let cases: [Case; 7] = [
            (
                &[("HOME", "/home/u")],
                None,
                "/home/u/.cache/huggingface/hub",
            ),
            (
                &[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")],
                None,
                "/xdg/huggingface/hub",
            ),
            (
                &[("HOME", "/home/u"), ("HF_HOME", "~/hf")],
                None,
                "/home/u/hf/hub",
            ),
            (
                &[
                    ("HOME", "/home/u"),
                    ("HF_HOME", "/hf"),
                    ("HUGGINGFACE_HUB_CACHE", "/old"),
                ],
                None,
                "/old",
            ),
            (
                &[
                    ("HF_HOME", "/hf"),
                    ("HF_HUB_CACHE", "/new"),
                    ("HUGGINGFACE_HUB_CACHE", "/old"),
                ],
                None,
                "/new",
            ),
            // An explicit clip.cache_dir wins; an empty variable is unset.
            (&[("HF_HUB_CACHE", "/new")], Some("/mine"), "/mine"),
            (
                &[("HOME", "/h"), ("HF_HUB_CACHE", ""), ("HF_HOME", "")],
                None,
                "/h/.cache/huggingface/hub",
            ),
        ];
        for (vars, cache_dir, want) in cases {
            assert_eq!(env(vars, cache_dir).cache_dir, Path::new(want), "{vars:?}");
        }
    }

    #[test]
    fn endpoint_and_offline() {
        assert_eq!(env(&[], None).endpoint, None);
        let e = env(&[("HF_ENDPOINT", "http://127.0.0.1:9/mirror/")], None);
        assert_eq!(e.endpoint.as_deref(), Some("http://127.0.0.1:9/mirror"));
        for (v, want) in [
            ("1", true),
            ("yes", true),
            ("ON", true),
            ("True", true),
            ("0", false),
            ("no", false),
        ] {
            assert_eq!(env(&[("HF_HUB_OFFLINE", v)], None).offline, want, "{v}");
        }
        assert!(env(&[("TRANSFORMERS_OFFLINE", "1")], None).offline);
        assert!(HubEnv::from_vars(|_| None, None, true).offline);
    }

    #[test]
    fn token_from_env_then_file_and_never_in_debug() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_str().unwrap();
        assert!(env(&[("HF_HOME", home)], None).token.is_none());
        std::fs::write(tmp.path().join("token"), " file-secret\n").unwrap();
        let e = env(&[("HF_HOME", home)], None);
        assert_eq!(e.token.as_ref().unwrap().value, "file-secret");
        assert!(e.token_source().unwrap().contains("token file"));
        let e = env(&[("HF_HOME", home), ("HF_TOKEN", "env-secret\r\n")], None);
        assert_eq!(e.token.as_ref().unwrap().value, "env-secret");
        assert_eq!(e.token_source(), Some("HF_TOKEN"));
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        let e = env(
            &[("HF_HOME", home), ("HUGGING_FACE_HUB_TOKEN", "old")],
            None,
        );
        assert_eq!(e.token.as_ref().unwrap().value, "old");
        // A blank HF_TOKEN falls through to the file, as in Python.
        let e = env(&[("HF_HOME", home), ("HF_TOKEN", "  ")], None);
        assert_eq!(e.token.as_ref().unwrap().value, "file-secret");
        let other = tmp.path().join("other");
        std::fs::write(&other, "path-secret").unwrap();
        let e = env(
            &[
                ("HF_HOME", home),
                ("HF_TOKEN_PATH", other.to_str().unwrap()),
            ],
            None,
        );
        assert_eq!(e.token.as_ref().unwrap().value, "path-secret");
        let e = env(
            &[
                ("HF_HOME", home),
                ("HF_TOKEN", "x"),
                ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1"),
            ],
            None,
        );
        assert!(e.token.is_none());
        // The cache directory does not move the token file.
        let e = env(&[("HF_HOME", home)], Some("/elsewhere"));
        assert_eq!(e.token.as_ref().unwrap().value, "file-secret");
    }
}
