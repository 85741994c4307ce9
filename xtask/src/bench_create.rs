//! Section `create`: gVisor workspace create → first exec, sequentially and N at once,
//! each next to its raw counterpart in the same run: `runsc run --detach` of a bundle on
//! the same root file system (no kraal, no network namespace, no overlay, no volume, no
//! guest agent) and `runsc exec` of `/bin/true` in it — sandboxes that stay up, as
//! workspaces do.

#![allow(clippy::disallowed_methods)] // Automation: spawns runsc and kraal directly.

use std::time::Instant;

use serde_json::json;

use crate::bench::{RawRunsc, Setup, mean, ms, percentile, stats};
use crate::report::{Row, Section, Unit};

pub(crate) fn section(
    s: &Setup,
    iterations: usize,
    concurrent: &[usize],
) -> anyhow::Result<Section> {
    s.warm_up()?;
    let raw = RawRunsc::new(s.tmp.path(), &s.base_rootfs()?, &["/bin/sleep", "infinity"])?;

    println!("  sequential: {iterations} iterations");
    let (mut raw_seq, mut kraal_seq, mut kraal_up, mut kraal_exec) =
        (vec![], vec![], vec![], vec![]);
    let repo = s.repo.to_str().unwrap();
    for i in 0..iterations {
        raw_seq.push(raw.start_and_exec(&format!("raw-{i}"))?);
        raw.delete(&format!("raw-{i}"));
        let name = format!("seq-{i}");
        let t = Instant::now();
        s.kraal(&["up", repo, "--name", &name])?;
        let up = t.elapsed();
        s.kraal(&["exec", &name, "--", "true"])?;
        let total = t.elapsed();
        kraal_up.push(ms(up));
        kraal_exec.push(ms(total - up));
        kraal_seq.push(ms(total));
    }
    let mut warm_exec = vec![];
    for _ in 0..20 {
        let t = Instant::now();
        s.kraal(&["exec", "seq-0", "--", "true"])?;
        warm_exec.push(ms(t.elapsed()));
    }
    s.remove_all()?;

    let mut rows = vec![
        Row::vs(
            "create → first exec",
            Unit::Ms,
            mean(&kraal_seq),
            "raw runsc run + exec",
            mean(&raw_seq),
        ),
        Row::alone(
            "warm exec (kraal exec ws -- true)",
            Unit::Ms,
            mean(&warm_exec),
        ),
    ];
    let mut conc = vec![];
    for &n in concurrent {
        println!("  concurrent: {n} creates at once");
        let (raw_each, raw_wall) = raw.start_and_exec_concurrently(&format!("rawc{n}"), n)?;
        let names: Vec<String> = (0..n).map(|i| format!("conc{n}-{i}")).collect();
        let t = Instant::now();
        let each = s.create_many(&names, n)?;
        let wall = ms(t.elapsed());
        s.remove_all()?;
        rows.push(Row::vs(
            format!("{n} concurrent creates → first exec, all done"),
            Unit::Ms,
            wall,
            "raw runsc run + exec ×N",
            raw_wall,
        ));
        rows.push(Row::vs(
            format!("{n} concurrent creates, p99 of each"),
            Unit::Ms,
            percentile(&each, 0.99),
            "raw runsc run + exec ×N",
            percentile(&raw_each, 0.99),
        ));
        conc.push(json!({
            "n": n,
            "raw_wall_ms": raw_wall,
            "raw_each": stats(raw_each),
            "kraal_wall_ms": wall,
            "kraal_each": stats(each),
        }));
    }
    Ok(Section {
        name: "create",
        title: "gVisor: create → first exec".into(),
        rows,
        details: json!({
            "sequential": {
                "raw_runsc_run_detach_then_exec_true": stats(raw_seq),
                "kraal_create_to_first_exec": stats(kraal_seq),
                "kraal_up": stats(kraal_up),
                "kraal_first_exec": stats(kraal_exec),
                "kraal_warm_exec": stats(warm_exec),
            },
            "concurrent": conc,
        }),
    })
}
