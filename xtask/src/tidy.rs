//! `cargo xtask tidy`: structure rules the compiler does not check, also run as a test of
//! this crate (so CI enforces them): no source file over [`MAX_LINES`] lines; no test that
//! could pass without checking anything — every test asserts (not `assert!(true)`),
//! itself or through a helper of its crate that does (followed by name, so a helper that
//! shares a name with an asserting function counts too); and no test that skips itself
//! when a dependency is missing, except behind the three allowed gates ([`GATES`]: CI
//! installs everything else).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The longest a source file under `crates/*/src` (or `xtask/src`) may be.
pub const MAX_LINES: usize = 900;

/// Macros that check something (a failed check fails the test).
const ASSERTING: &[&str] = &[
    "assert",
    "assert_eq",
    "assert_ne",
    "assert_matches",
    "debug_assert",
    "debug_assert_eq",
    "debug_assert_ne",
    "prop_assert",
    "prop_assert_eq",
    "prop_assert_ne",
    "panic",
];

/// What a test may skip for: hardware KVM, a Firecracker binary, a real cluster.
pub const GATES: &[&str] = &[
    "KRAAL_TEST_KVM",
    "KRAAL_FIRECRACKER_BIN",
    "KRAAL_TEST_KUBECONFIG",
];

/// Every problem found, one line each (empty: tidy).
pub fn check(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for (path, lines) in long_files(root)? {
        problems.push(format!(
            "{}: {lines} lines (more than {MAX_LINES}); split it along its concerns",
            rel(root, &path)
        ));
    }
    let (empty, skipping) = scan_tests(root)?;
    for t in empty {
        problems.push(format!(
            "{t}: a test that asserts nothing (no assert!, assert_eq!… itself or in a helper it calls)"
        ));
    }
    for t in skipping {
        problems.push(format!(
            "{t}: skips itself when something is missing; CI installs every dependency, so it must fail instead (only {} may gate)",
            GATES.join(", ")
        ));
    }
    Ok(problems)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| e.into_path())
        .collect()
}

fn crates(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    v.push(root.join("xtask"));
    v.sort();
    Ok(v)
}

/// Source files (not tests, fixtures or generated code) longer than [`MAX_LINES`].
pub fn long_files(root: &Path) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let mut out = Vec::new();
    for c in crates(root)? {
        for f in rust_files(&c.join("src")) {
            let lines = std::fs::read_to_string(&f)?.lines().count();
            if lines > MAX_LINES {
                out.push((f, lines));
            }
        }
    }
    Ok(out)
}

/// What one file holds: its functions (name → whether the body asserts, and the names it
/// calls) and which of them are tests.
#[derive(Default)]
struct Scan {
    fns: HashMap<String, (bool, HashSet<String>)>,
    tests: Vec<String>,
    skipping: Vec<String>,
}

#[derive(Default)]
struct FnBody {
    asserts: bool,
    calls: HashSet<String>,
    /// It prints that it skipped, without naming an allowed gate.
    skips: bool,
}

/// `assert!(true)` and the like check nothing.
fn trivially_true(m: &syn::Macro) -> bool {
    m.tokens.to_string().trim() == "true"
}

impl<'a> Visit<'a> for FnBody {
    fn visit_macro(&mut self, m: &'a syn::Macro) {
        let name = m
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        if ASSERTING.contains(&name.as_str()) && !trivially_true(m) {
            self.asserts = true;
        }
        if matches!(name.as_str(), "eprintln" | "println") {
            let text = m.tokens.to_string().to_lowercase();
            if (text.contains("skipped") || text.contains("skipping"))
                && !GATES.iter().any(|g| text.contains(&g.to_lowercase()))
            {
                self.skips = true;
            }
        }
        // Inside other macros (`tokio::select!`, `vec!`, a test's own helpers) the body is
        // tokens, not syntax: look for `name!` and calls `name(` there.
        tokens(m.tokens.clone(), self);
    }

    fn visit_expr_call(&mut self, c: &'a syn::ExprCall) {
        if let syn::Expr::Path(p) = &*c.func
            && let Some(s) = p.path.segments.last()
        {
            self.calls.insert(s.ident.to_string());
        }
        syn::visit::visit_expr_call(self, c);
    }

    fn visit_expr_method_call(&mut self, c: &'a syn::ExprMethodCall) {
        self.calls.insert(c.method.to_string());
        syn::visit::visit_expr_method_call(self, c);
    }
}

fn tokens(ts: TokenStream, into: &mut FnBody) {
    let v: Vec<TokenTree> = ts.into_iter().collect();
    for (i, t) in v.iter().enumerate() {
        match t {
            TokenTree::Ident(id) => {
                let name = id.to_string();
                match v.get(i + 1) {
                    Some(TokenTree::Punct(p))
                        if p.as_char() == '!' && ASSERTING.contains(&name.as_str()) =>
                    {
                        into.asserts = true;
                    }
                    Some(TokenTree::Group(g))
                        if g.delimiter() == proc_macro2::Delimiter::Parenthesis =>
                    {
                        into.calls.insert(name);
                    }
                    _ => {}
                }
            }
            TokenTree::Group(g) => tokens(g.stream(), into),
            _ => {}
        }
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().segments.last().is_some_and(|s| s.ident == "test"))
}

struct Items<'s> {
    scan: &'s mut Scan,
    file: String,
    /// A file under `tests/`: every function in it is test code.
    test_file: bool,
}

impl<'a> Visit<'a> for Items<'_> {
    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        let name = f.sig.ident.to_string();
        let mut body = FnBody::default();
        body.visit_block(&f.block);
        let test = is_test(&f.attrs);
        if test {
            self.scan.tests.push(format!("{}: {name}", self.file));
        }
        if body.skips && (test || self.test_file) {
            self.scan.skipping.push(format!("{}: {name}", self.file));
        }
        let e = self
            .scan
            .fns
            .entry(name)
            .or_insert_with(|| (false, HashSet::new()));
        e.0 |= body.asserts;
        e.1.extend(body.calls);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'a syn::ImplItemFn) {
        let mut body = FnBody::default();
        body.visit_block(&f.block);
        let e = self
            .scan
            .fns
            .entry(f.sig.ident.to_string())
            .or_insert_with(|| (false, HashSet::new()));
        e.0 |= body.asserts;
        e.1.extend(body.calls);
        syn::visit::visit_impl_item_fn(self, f);
    }
}

/// Tests (`#[test]`, `#[tokio::test]`) that assert nothing, neither in their body nor in a
/// function of their crate they call (followed through calls, by name); and test code that
/// skips without an allowed gate.
pub fn scan_tests(root: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut skipping = Vec::new();
    for c in crates(root)? {
        let mut scan = Scan::default();
        let files = rust_files(&c.join("src"))
            .into_iter()
            .map(|f| (f, false))
            .chain(rust_files(&c.join("tests")).into_iter().map(|f| (f, true)));
        for (f, test_file) in files {
            let text = std::fs::read_to_string(&f)?;
            let ast =
                syn::parse_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", rel(root, &f)))?;
            Items {
                scan: &mut scan,
                file: rel(root, &f),
                test_file,
            }
            .visit_file(&ast);
        }
        skipping.append(&mut scan.skipping);
        // A function asserts if its body does or a function it calls does.
        let mut asserting: HashSet<String> = scan
            .fns
            .iter()
            .filter(|(_, (a, _))| *a)
            .map(|(n, _)| n.clone())
            .collect();
        loop {
            let more: Vec<String> = scan
                .fns
                .iter()
                .filter(|(n, (_, calls))| {
                    !asserting.contains(*n) && calls.iter().any(|c| asserting.contains(c))
                })
                .map(|(n, _)| n.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            asserting.extend(more);
        }
        for t in scan.tests {
            let name = t.rsplit(": ").next().unwrap_or_default();
            if !asserting.contains(name) {
                out.push(t);
            }
        }
    }
    Ok((out, skipping))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(src: &str) -> FnBody {
        let f: syn::ItemFn = syn::parse_str(src).unwrap();
        let mut b = FnBody::default();
        b.visit_block(&f.block);
        b
    }

    #[test]
    fn assertions_are_found_in_bodies_closures_and_other_macros() {
        assert!(body_of("fn t() { assert_eq!(1, 1); }").asserts);
        assert!(body_of("fn t() { std::thread::scope(|s| { assert!(s.is_ok()) }); }").asserts);
        assert!(body_of("fn t() { tokio::select! { _ = a => { assert_ne!(1, 2) } } }").asserts);
        assert!(!body_of("fn t() { let x = 1; println!(\"{x}\"); }").asserts);
        assert!(!body_of("fn t() { assert!(true); }").asserts);
        assert!(body_of("fn t() { eprintln!(\"skipped: needs nft\"); return; }").skips);
        assert!(!body_of("fn t() { eprintln!(\"skipped: set KRAAL_TEST_KVM\"); }").skips);
        assert!(!body_of("fn t() { helper(); }").asserts);
        assert!(body_of("fn t() { helper(); }").calls.contains("helper"));
    }

    #[test]
    fn a_test_asserting_nothing_is_reported_and_one_asserting_through_a_helper_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("crates/demo");
        std::fs::create_dir_all(c.join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("xtask/src")).unwrap();
        std::fs::write(c.join("Cargo.toml"), "[package]\nname = \"demo\"\n").unwrap();
        std::fs::write(
            c.join("src/lib.rs"),
            "fn check(x: u8) { assert!(x > 0) }\nfn via(x: u8) { check(x) }\n\
             #[test] fn good() { assert_eq!(1, 1) }\n\
             #[test] fn through_helpers() { via(1) }\n\
             #[tokio::test] async fn empty() { let _ = 1; }\n\
             #[test] fn skips() { if true { eprintln!(\"skipped: no nft\"); return; } assert!(false) }\n",
        )
        .unwrap();
        std::fs::write(c.join("src/long.rs"), "//\n".repeat(MAX_LINES + 1)).unwrap();
        let (empty, skipping) = scan_tests(dir.path()).unwrap();
        assert_eq!(empty, vec!["crates/demo/src/lib.rs: empty".to_owned()]);
        assert_eq!(skipping, vec!["crates/demo/src/lib.rs: skips".to_owned()]);
        let long = long_files(dir.path()).unwrap();
        assert_eq!(long.len(), 1);
        assert_eq!(long[0].1, MAX_LINES + 1);
        assert_eq!(check(dir.path()).unwrap().len(), 3);
    }
}
