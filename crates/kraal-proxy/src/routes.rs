//! The model API calls the gateway forwards: per provider, the method and exact path of
//! every call a supported agent makes. Everything else under a provider's prefix — batches,
//! files, fine-tuning, admin, a path not in normal form — is refused before a credential is
//! looked up, and reported through [`GatewayAudit`] for the daemon's audit log.

/// The API a gateway path prefix (`/anthropic`, `/openai`, `/google`) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    Anthropic,
    OpenAi,
    Google,
}

impl Provider {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
            Provider::Google => "google",
        }
    }
}

/// One forwarded call. In a path, `{model}` stands for a model id (letters, digits, `.`,
/// `_`, `-`); the rest of its segment must follow literally.
struct Route {
    method: &'static str,
    path: &'static str,
}

const fn route(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

/// `ANTHROPIC_BASE_URL` is `…/anthropic` (Claude Code).
const ANTHROPIC: &[Route] = &[
    // Every turn and side request (`?beta=true`).
    route("POST", "/v1/messages"),
    // Token counts of the context.
    route("POST", "/v1/messages/count_tokens"),
    // The model list of Claude Code's gateway model discovery; read only.
    route("GET", "/v1/models"),
    route("GET", "/v1/models/{model}"),
];

/// The OpenAI base URL is `…/openai/v1` (Codex, OpenCode, Qwen Code; Goose's base path).
const OPENAI: &[Route] = &[
    // Codex and OpenCode turns.
    route("POST", "/v1/responses"),
    // Codex's remote compaction of a long conversation.
    route("POST", "/v1/responses/compact"),
    // Qwen Code and Goose turns.
    route("POST", "/v1/chat/completions"),
    // Model lists (Goose, Codex); read only.
    route("GET", "/v1/models"),
    route("GET", "/v1/models/{model}"),
];

/// `GOOGLE_GEMINI_BASE_URL` is `…/google` (Gemini CLI).
const GOOGLE: &[Route] = &[
    // Side requests: model routing, next speaker, titles.
    route("POST", "/v1beta/models/{model}:generateContent"),
    // Turns (`?alt=sse`).
    route("POST", "/v1beta/models/{model}:streamGenerateContent"),
    // Token counts of media parts.
    route("POST", "/v1beta/models/{model}:countTokens"),
    // Model lists; read only.
    route("GET", "/v1beta/models"),
    route("GET", "/v1beta/models/{model}"),
];

/// Why a request is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `..`, `//`, `.` segments, `%` escapes, backslashes or other bytes no API path has:
    /// whatever the upstream would resolve it to, it is not what was checked.
    NotNormal,
    /// No supported agent calls this path.
    NotUsed,
    /// The path is forwarded for another method only.
    Method { allowed: &'static str },
}

impl Refusal {
    pub(crate) fn reason(self) -> String {
        match self {
            Refusal::NotNormal => "the path is not in normal form".into(),
            Refusal::NotUsed => "no supported agent calls it".into(),
            Refusal::Method { allowed } => format!("this path is forwarded for {allowed} only"),
        }
    }
}

/// Whether `method rest` (the path after the provider's prefix, without the query) is a
/// call the agents make on `provider`'s API.
pub(crate) fn check(provider: Provider, method: &str, rest: &str) -> Result<(), Refusal> {
    if !normal(rest) {
        return Err(Refusal::NotNormal);
    }
    let routes = match provider {
        Provider::Anthropic => ANTHROPIC,
        Provider::OpenAi => OPENAI,
        Provider::Google => GOOGLE,
    };
    let mut other = None;
    for r in routes.iter().filter(|r| matches(r.path, rest)) {
        if r.method == method {
            return Ok(());
        }
        other = Some(r.method);
    }
    Err(other.map_or(Refusal::NotUsed, |allowed| Refusal::Method { allowed }))
}

/// Only the bytes model API paths are made of, and nothing an upstream would resolve.
fn normal(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b))
        && !path.contains("//")
        && !path.contains("..")
        && !path.split('/').any(|s| s == ".")
}

fn matches(pattern: &str, path: &str) -> bool {
    pattern.split('/').count() == path.split('/').count()
        && pattern
            .split('/')
            .zip(path.split('/'))
            .all(|(p, s)| match p.strip_prefix("{model}") {
                Some(suffix) => s.strip_suffix(suffix).is_some_and(model_id),
                None => p == s,
            })
}

fn model_id(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A request the gateway refused to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRequest {
    pub workspace: String,
    pub method: String,
    /// As asked for, with the provider's prefix and without the query (at most 200
    /// characters).
    pub path: String,
    pub reason: String,
}

/// Where the gateway reports the requests it refused; the daemon writes them to its audit
/// log. Called on the request path: it must not block.
pub trait GatewayAudit: Send + Sync {
    fn refused(&self, r: RefusedRequest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use Provider::*;

    #[test]
    fn every_call_the_agents_make_is_forwarded() {
        // What the real CLIs sent through a recording proxy, and the model lists.
        for (p, method, path) in [
            (Anthropic, "POST", "/v1/messages"),
            (Anthropic, "POST", "/v1/messages/count_tokens"),
            (Anthropic, "GET", "/v1/models"),
            (Anthropic, "GET", "/v1/models/claude-sonnet-4-5-20250929"),
            (OpenAi, "POST", "/v1/responses"),
            (OpenAi, "POST", "/v1/responses/compact"),
            (OpenAi, "POST", "/v1/chat/completions"),
            (OpenAi, "GET", "/v1/models"),
            (OpenAi, "GET", "/v1/models/gpt-5.1-codex"),
            (
                Google,
                "POST",
                "/v1beta/models/gemini-2.5:streamGenerateContent",
            ),
            (
                Google,
                "POST",
                "/v1beta/models/gemini-3.5-lite:generateContent",
            ),
            (Google, "POST", "/v1beta/models/gemini-2.5_x:countTokens"),
            (Google, "GET", "/v1beta/models"),
            (Google, "GET", "/v1beta/models/gemini-2.5-pro"),
        ] {
            assert_eq!(check(p, method, path), Ok(()), "{method} {path}");
        }
    }

    #[test]
    fn other_endpoints_are_refused() {
        for (p, method, path) in [
            (Anthropic, "POST", "/v1/messages/batches"),
            (Anthropic, "GET", "/v1/files"),
            (Anthropic, "GET", "/v1/organizations/api_keys"),
            (Anthropic, "POST", ""),
            (Anthropic, "POST", "/v1/messages/"),
            (Anthropic, "POST", "/V1/messages"),
            (OpenAi, "POST", "/v1/fine_tuning/jobs"),
            (OpenAi, "POST", "/v1/files"),
            (OpenAi, "GET", "/v1/models/ft:gpt-4o:org::x"),
            (OpenAi, "GET", "/v1/models/.hidden"),
            (Google, "POST", "/v1beta/models/:generateContent"),
            (Google, "POST", "/v1beta/models/a:b:generateContent"),
            (Google, "POST", "/v1beta/tunedModels"),
            (Google, "POST", "/v1/models/g:generateContent"),
        ] {
            assert_eq!(check(p, method, path), Err(Refusal::NotUsed), "{path}");
        }
    }

    /// Paths an upstream could resolve to something else than what was matched.
    #[test]
    fn paths_not_in_normal_form_are_refused() {
        for (p, path) in [
            (Anthropic, "/v1/../v1/organizations"),
            (Anthropic, "/v1/messages%2f..%2fbatches"),
            (Anthropic, "/v1/messages/%2e%2e/batches"),
            (Anthropic, "/v1/%6dessages"),
            (Anthropic, "/v1/./messages"),
            (Anthropic, "/v1\\messages"),
            (OpenAi, "//v1/responses"),
            (OpenAi, "/v1/models/.."),
            (Google, "/v1beta/models/g:generateContent#x"),
            (Google, "/v1beta/models/g\u{e9}:generateContent"),
        ] {
            assert_eq!(check(p, "POST", path), Err(Refusal::NotNormal), "{path}");
        }
    }

    #[test]
    fn a_forwarded_path_with_another_method_is_refused() {
        for (p, method, path, allowed) in [
            (Anthropic, "GET", "/v1/messages", "POST"),
            (OpenAi, "DELETE", "/v1/models/x", "GET"),
            (OpenAi, "GET", "/v1/responses", "POST"),
            (Google, "GET", "/v1beta/models/g:generateContent", "POST"),
        ] {
            let want = Err(Refusal::Method { allowed });
            assert_eq!(check(p, method, path), want, "{method} {path}");
        }
    }
}
