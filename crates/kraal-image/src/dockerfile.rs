//! The Dockerfile subset kraal builds without a Docker engine: `FROM`, `RUN`, `COPY`,
//! `ENV`, `WORKDIR`, `USER`, `ARG` (plus `EXPOSE`, and `LABEL`, `CMD`, `ENTRYPOINT`, which
//! have no effect on a workspace). Parsing resolves variables and build arguments into a
//! [`Plan`] of steps; any other instruction or form is an error naming the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A step that changes the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Runs a command in a sandbox; its changes become a layer.
    Run {
        line: usize,
        argv: Vec<String>,
        /// `ENV` and `ARG` values in effect (on top of the base image's environment).
        env: BTreeMap<String, String>,
        user: Option<String>,
        workdir: String,
    },
    /// Copies files from the build context.
    Copy {
        line: usize,
        sources: Vec<PathBuf>,
        dest: String,
        chown: Option<String>,
    },
}

impl Step {
    pub fn line(&self) -> usize {
        match self {
            Step::Run { line, .. } | Step::Copy { line, .. } => *line,
        }
    }
}

/// A resolved Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from: String,
    pub steps: Vec<Step>,
    /// `ENV` values at the end (the image's environment on top of the base's).
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub ports: Vec<u16>,
}

/// Splits the file into instructions: (line number, keyword upper-cased, arguments).
fn instructions(text: &str) -> Result<Vec<(usize, String, String)>, String> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') || (trimmed.is_empty() && cur.is_none()) {
            continue;
        }
        let (body, cont) = match raw.trim_end().strip_suffix('\\') {
            Some(b) => (b, true),
            None => (raw.trim_end(), false),
        };
        match &mut cur {
            Some((_, acc)) => {
                acc.push(' ');
                acc.push_str(body.trim());
            }
            None => cur = Some((n, body.trim().to_owned())),
        }
        if !cont && let Some((line, acc)) = cur.take() {
            let (kw, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
            if args.contains("<<") && kw.eq_ignore_ascii_case("RUN") {
                let w = args
                    .split_whitespace()
                    .find(|w| w.starts_with("<<"))
                    .unwrap_or("");
                if w.len() > 2
                    && w[2..]
                        .trim_start_matches('-')
                        .chars()
                        .all(|c| c.is_ascii_alphabetic() || c == '"' || c == '\'')
                {
                    return Err(format!(
                        "line {line}: here-documents in RUN are not supported"
                    ));
                }
            }
            out.push((line, kw.to_ascii_uppercase(), args.trim().to_owned()));
        }
    }
    if let Some((line, _)) = cur {
        return Err(format!(
            "line {line}: the file ends inside a continued line"
        ));
    }
    Ok(out)
}

/// Expands `$X`, `${X}`, `${X:-default}` and `${X:+alt}` from `vars`; `\$` is a literal.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => return Err(format!("unterminated ${{ in {s:?}")),
                    }
                }
                let (name, op) = match inner.find(":-").or_else(|| inner.find(":+")) {
                    Some(i) => (&inner[..i], Some((&inner[i..i + 2], &inner[i + 2..]))),
                    None => (inner.as_str(), None),
                };
                let val = vars.get(name).filter(|v| !v.is_empty());
                match (op, val) {
                    (None, v) => out.push_str(v.map(String::as_str).unwrap_or("")),
                    (Some((":-", d)), None) => out.push_str(d),
                    (Some((":-", _)), Some(v)) => out.push_str(v),
                    (Some((_, alt)), Some(_)) => out.push_str(alt),
                    (Some(_), None) => {}
                }
            }
            '$' if chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') =>
            {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        name.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Splits `ENV`/`ARG`-style words, honouring quotes and backslashes.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in {s:?}"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn json_array(args: &str) -> Option<Result<Vec<String>, String>> {
    args.starts_with('[').then(|| {
        serde_json::from_str::<Vec<String>>(args)
            .map_err(|_| format!("{args:?} is not a JSON array of strings"))
    })
}

fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Resolves `text` (the Dockerfile at `path`) with build arguments `args`; `COPY` sources
/// must lie inside `context`.
pub fn plan(
    path: &Path,
    text: &str,
    args: &BTreeMap<String, String>,
    context: &Path,
) -> Result<Plan, String> {
    let at = |line: usize, m: String| format!("{}:{line}: {m}", path.display());
    let instrs = instructions(text).map_err(|m| format!("{}: {m}", path.display()))?;
    let mut arg_vals: BTreeMap<String, String> = BTreeMap::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut from: Option<String> = None;
    let mut user = None;
    let mut workdir: Option<String> = None;
    let mut steps = Vec::new();
    let mut ports = Vec::new();
    let context = context
        .canonicalize()
        .map_err(|e| format!("build context {}: {e}", context.display()))?;
    for (line, kw, rest) in instrs {
        // Variables visible to this instruction: build arguments, then ENV (which wins).
        let vars: BTreeMap<String, String> = arg_vals
            .iter()
            .chain(env.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let x = |s: &str| expand(s, &vars).map_err(|m| at(line, m));
        if from.is_none() && kw != "FROM" && kw != "ARG" {
            return Err(at(line, format!("{kw} before FROM")));
        }
        match kw.as_str() {
            "FROM" => {
                if from.is_some() {
                    return Err(at(
                        line,
                        "multi-stage builds (a second FROM) are not supported".into(),
                    ));
                }
                let w = words(&rest).map_err(|m| at(line, m))?;
                let image = match w.as_slice() {
                    [img] => img,
                    [img, as_, _name] if as_.eq_ignore_ascii_case("as") => img,
                    [flag, ..] if flag.starts_with("--") => {
                        return Err(at(line, format!("FROM {flag} is not supported")));
                    }
                    _ => return Err(at(line, "FROM takes one image".into())),
                };
                let image = x(image)?;
                if image == "scratch" {
                    return Err(at(
                        line,
                        "FROM scratch is not supported: a workspace needs a shell".into(),
                    ));
                }
                from = Some(image);
                // Arguments declared before FROM are only visible to FROM.
                arg_vals.clear();
            }
            "ARG" => {
                for w in words(&rest).map_err(|m| at(line, m))? {
                    let (k, default) = match w.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(x(v)?)),
                        None => (w.clone(), None),
                    };
                    if !valid_name(&k) {
                        return Err(at(line, format!("ARG name {k:?} is not valid")));
                    }
                    let v = args.get(&k).cloned().or(default).unwrap_or_default();
                    arg_vals.insert(k, v);
                }
            }
            "ENV" => {
                let w = words(&rest).map_err(|m| at(line, m))?;
                if w.is_empty() {
                    return Err(at(line, "ENV needs a name and a value".into()));
                }
                let pairs: Vec<(String, String)> = if w[0].contains('=') {
                    w.iter()
                        .map(|p| {
                            p.split_once('=')
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .ok_or_else(|| at(line, format!("ENV {p:?} is not NAME=value")))
                        })
                        .collect::<Result<_, _>>()?
                } else {
                    let (k, v) = rest.split_once(char::is_whitespace).unwrap_or((&rest, ""));
                    vec![(k.to_owned(), v.trim().to_owned())]
                };
                for (k, v) in pairs {
                    if !valid_name(&k) {
                        return Err(at(line, format!("ENV name {k:?} is not valid")));
                    }
                    let v = x(&v)?;
                    env.insert(k, v);
                }
            }
            "WORKDIR" => {
                let d = x(rest.trim())?;
                if d.is_empty() {
                    return Err(at(line, "WORKDIR needs a path".into()));
                }
                let base = workdir.clone().unwrap_or_else(|| "/".into());
                workdir = Some(join(&base, &d));
            }
            "USER" => {
                let u = x(rest.trim())?;
                if u.is_empty()
                    || !u
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
                {
                    return Err(at(
                        line,
                        format!("USER {u:?} is not a user name or uid[:gid]"),
                    ));
                }
                user = Some(u);
            }
            "RUN" => {
                if rest.starts_with("--") {
                    let flag = rest.split_whitespace().next().unwrap_or("");
                    return Err(at(line, format!("RUN {flag} is not supported")));
                }
                let argv = match json_array(&rest) {
                    Some(a) => a.map_err(|m| at(line, m))?,
                    None => vec!["/bin/sh".into(), "-c".into(), rest.clone()],
                };
                if argv.is_empty() || rest.is_empty() {
                    return Err(at(line, "RUN needs a command".into()));
                }
                let mut step_env = arg_vals.clone();
                step_env.extend(env.clone());
                steps.push(Step::Run {
                    line,
                    argv,
                    env: step_env,
                    user: user.clone(),
                    workdir: workdir.clone().unwrap_or_else(|| "/".into()),
                });
            }
            "COPY" => {
                let mut w = match json_array(&rest) {
                    Some(a) => a.map_err(|m| at(line, m))?,
                    None => words(&rest).map_err(|m| at(line, m))?,
                };
                let mut chown = None;
                while w.first().is_some_and(|f| f.starts_with("--")) {
                    let f = w.remove(0);
                    match f.split_once('=') {
                        Some(("--chown", v)) => chown = Some(x(v)?),
                        Some(("--from", _)) => {
                            return Err(at(
                                line,
                                "COPY --from (multi-stage) is not supported".into(),
                            ));
                        }
                        _ if f == "--link" => {}
                        _ => return Err(at(line, format!("COPY {f} is not supported"))),
                    }
                }
                if w.len() < 2 {
                    return Err(at(line, "COPY needs a source and a destination".into()));
                }
                let dest_raw = x(&w.pop().expect("two or more"))?;
                let mut sources = Vec::new();
                for s in &w {
                    let s = x(s)?;
                    if s.contains(['*', '?', '[']) {
                        return Err(at(
                            line,
                            format!("COPY source {s:?}: wildcards are not supported"),
                        ));
                    }
                    if escapes(&s) {
                        return Err(at(
                            line,
                            format!("COPY source {s:?} is outside the build context"),
                        ));
                    }
                    let p = context.join(s.trim_start_matches('/'));
                    let p = p.canonicalize().map_err(|_| {
                        at(
                            line,
                            format!(
                                "COPY source {s:?} does not exist in the build context {}",
                                context.display()
                            ),
                        )
                    })?;
                    if !p.starts_with(&context) {
                        return Err(at(
                            line,
                            format!("COPY source {s:?} is outside the build context"),
                        ));
                    }
                    sources.push(p);
                }
                let base = workdir.clone().unwrap_or_else(|| "/".into());
                let mut dest = join(&base, &dest_raw);
                if dest_raw.ends_with('/') && !dest.ends_with('/') {
                    dest.push('/');
                }
                if sources.len() > 1 && !dest.ends_with('/') {
                    return Err(at(
                        line,
                        "COPY with several sources needs a destination ending in /".into(),
                    ));
                }
                steps.push(Step::Copy {
                    line,
                    sources,
                    dest,
                    chown,
                });
            }
            "EXPOSE" => {
                for w in words(&rest).map_err(|m| at(line, m))? {
                    let w = x(&w)?;
                    let p = w.split('/').next().unwrap_or("");
                    match p.parse::<u16>() {
                        Ok(p) if p > 0 => ports.push(p),
                        _ => return Err(at(line, format!("EXPOSE {w:?} is not a port"))),
                    }
                }
            }
            // A workspace's first process is the guest agent; labels are metadata.
            "LABEL" | "CMD" | "ENTRYPOINT" | "MAINTAINER" | "STOPSIGNAL" => {}
            "ADD" => {
                return Err(at(line, "ADD is not supported; use COPY for files from the context, or RUN curl for URLs".into()));
            }
            other => {
                return Err(at(
                    line,
                    format!(
                        "{other} is not supported (FROM, RUN, COPY, ENV, WORKDIR, USER, ARG, EXPOSE, LABEL, CMD, ENTRYPOINT are)"
                    ),
                ));
            }
        }
    }
    let from = from.ok_or_else(|| format!("{}: no FROM instruction", path.display()))?;
    Ok(Plan {
        from,
        steps,
        env,
        user,
        workdir,
        ports,
    })
}

/// Whether a relative path climbs above where it starts.
fn escapes(p: &str) -> bool {
    let mut depth = 0i32;
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// `dir` joined with `p` (absolute `p` replaces it), normalised.
fn join(dir: &str, p: &str) -> String {
    let full = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("{}/{p}", dir.trim_end_matches('/'))
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.txt"), "a").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        d
    }

    fn plan_of(text: &str, args: &[(&str, &str)]) -> Result<Plan, String> {
        let c = ctx();
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan(Path::new("Dockerfile"), text, &args, c.path())
    }

    #[test]
    fn resolves_the_supported_subset() {
        let p = plan_of(
            r#"# syntax=docker/dockerfile:1
ARG BASE=debian:12
FROM ${BASE} AS dev
ARG GREETING=hi
ENV APP_HOME=/opt/app \
    MODE="dev mode"
WORKDIR $APP_HOME
RUN echo $GREETING > greeting && \
    mkdir -p sub
RUN ["touch", "/exec-form"]
COPY --chown=dev:dev a.txt dir ./sub/
USER dev
EXPOSE 8080/tcp 9000
CMD ["bash"]
"#,
            &[("GREETING", "hello")],
        )
        .unwrap();
        assert_eq!(p.from, "debian:12");
        assert_eq!(p.env["APP_HOME"], "/opt/app");
        assert_eq!(p.env["MODE"], "dev mode");
        assert_eq!(p.workdir.as_deref(), Some("/opt/app"));
        assert_eq!(p.user.as_deref(), Some("dev"));
        assert_eq!(p.ports, vec![8080, 9000]);
        assert_eq!(p.steps.len(), 3);
        match &p.steps[0] {
            Step::Run {
                argv,
                env,
                workdir,
                user,
                line,
            } => {
                assert_eq!(argv[2], "echo $GREETING > greeting && mkdir -p sub");
                assert_eq!(env["GREETING"], "hello", "build args override ARG defaults");
                assert_eq!(workdir, "/opt/app");
                assert_eq!(*user, None);
                assert_eq!(*line, 8);
            }
            s => panic!("{s:?}"),
        }
        match &p.steps[2] {
            Step::Copy {
                sources,
                dest,
                chown,
                ..
            } => {
                assert_eq!(sources.len(), 2);
                assert_eq!(dest, "/opt/app/sub/");
                assert_eq!(chown.as_deref(), Some("dev:dev"));
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn unsupported_forms_name_the_line() {
        for (text, want) in [
            ("FROM a\nFROM b\n", ":2: multi-stage"),
            ("FROM a\nADD http://x/y /y\n", ":2: ADD is not supported"),
            (
                "FROM a\nHEALTHCHECK CMD true\n",
                ":2: HEALTHCHECK is not supported",
            ),
            ("FROM a\nCOPY --from=b /x /y\n", "COPY --from"),
            (
                "FROM a\nCOPY ../etc/passwd /x\n",
                "outside the build context",
            ),
            ("FROM a\nCOPY missing /x\n", "does not exist"),
            ("FROM a\nCOPY *.txt /x/\n", "wildcards"),
            ("RUN true\n", ":1: RUN before FROM"),
            ("# nothing\n", "no FROM"),
            ("FROM a\nRUN echo \\\n", "ends inside a continued line"),
            ("FROM a\nRUN <<EOF\necho\nEOF\n", "here-documents"),
            (
                "FROM a\nRUN --mount=type=cache,target=/x true\n",
                "RUN --mount",
            ),
            ("FROM a\nENV 1X=2\n", "ENV name"),
            ("FROM a\nEXPOSE http\n", "EXPOSE"),
            ("FROM scratch\n", "scratch"),
        ] {
            let e = plan_of(text, &[]).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn expansion_forms() {
        let v = BTreeMap::from([
            ("A".to_owned(), "1".to_owned()),
            ("E".to_owned(), String::new()),
        ]);
        assert_eq!(
            expand("$A-${A}-${B:-d}-${A:+set}-${E:-empty}-\\$A", &v).unwrap(),
            "1-1-d-set-empty-$A"
        );
        assert!(expand("${A", &v).is_err());
    }
}
