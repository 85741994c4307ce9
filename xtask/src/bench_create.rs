//! Section `create`: gVisor workspace create → first exec, sequentially and N at once,
//! each next to two raw counterparts in the same run, both `runsc run --detach` then
//! `runsc exec` of `/bin/true`, sandboxes that stay up as workspaces do:
//! * on kraal's own bundle (a workspace's `config.json` and runsc flags, a network
//!   namespace made beforehand; see `bench_bundle`): the target's baseline, so the
//!   difference is kraal's own work;
//! * on a minimal bundle of the same root file system (no network namespace, overlay,
//!   volume, mounts or limits): what runsc itself costs at the least.

#![allow(clippy::disallowed_methods)] // Automation: spawns runsc and kraal directly.

use std::time::Instant;

use serde_json::json;

use crate::bench::{RawRunsc, Setup, mean, ms, percentile, stats};
use crate::bench_bundle::OwnBundle;
use crate::report::{Row, Section, Unit};

pub(crate) fn section(
    s: &Setup,
    iterations: usize,
    concurrent: &[usize],
) -> anyhow::Result<Section> {
    s.warm_up()?;
    let raw = RawRunsc::new(s.tmp.path(), &s.base_rootfs()?, &["/bin/sleep", "infinity"])?;
    // The workspace whose bundle the own-bundle baseline runs; it stays up meanwhile.
    s.kraal(&["up", s.repo.to_str().unwrap(), "--name", "bundle-src"])?;
    let own = OwnBundle::of(s, "bundle-src")?;

    println!("  sequential: {iterations} iterations");
    let (mut raw_seq, mut own_seq, mut kraal_seq, mut kraal_up, mut kraal_exec) =
        (vec![], vec![], vec![], vec![], vec![]);
    let repo = s.repo.to_str().unwrap();
    for i in 0..iterations {
        raw_seq.push(raw.start_and_exec(&format!("raw-{i}"))?);
        raw.delete(&format!("raw-{i}"));
        let oid = format!("own-{i:04}");
        own.prepare(&oid)?;
        own_seq.push(own.start_and_exec(&oid)?);
        own.remove(&oid);
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
    for i in 0..iterations {
        s.kraal(&["rm", "--yes", &format!("seq-{i}")])?;
    }

    let mut rows = vec![
        Row::vs(
            "create → first exec",
            Unit::Ms,
            mean(&kraal_seq),
            "raw runsc, kraal's bundle",
            mean(&own_seq),
        ),
        Row::vs(
            "create → first exec (vs minimal bundle)",
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
        let (own_each, own_wall) = own.start_and_exec_concurrently(&format!("ownc{n}-"), n)?;
        let names: Vec<String> = (0..n).map(|i| format!("conc{n}-{i}")).collect();
        let t = Instant::now();
        let each = s.create_many(&names, n)?;
        let wall = ms(t.elapsed());
        for name in &names {
            s.kraal(&["rm", "--yes", name])?;
        }
        rows.push(Row::vs(
            format!("{n} concurrent creates → first exec, all done"),
            Unit::Ms,
            wall,
            "raw runsc ×N, kraal's bundle",
            own_wall,
        ));
        rows.push(Row::vs(
            format!("{n} concurrent creates, all done (vs minimal bundle)"),
            Unit::Ms,
            wall,
            "raw runsc run + exec ×N",
            raw_wall,
        ));
        rows.push(Row::vs(
            format!("{n} concurrent creates, p99 of each"),
            Unit::Ms,
            percentile(&each, 0.99),
            "raw runsc ×N, kraal's bundle",
            percentile(&own_each, 0.99),
        ));
        conc.push(json!({
            "n": n,
            "raw_wall_ms": raw_wall,
            "raw_each": stats(raw_each),
            "own_bundle_wall_ms": own_wall,
            "own_bundle_each": stats(own_each),
            "kraal_wall_ms": wall,
            "kraal_each": stats(each),
        }));
    }
    s.remove_all()?;
    Ok(Section {
        name: "create",
        title: "gVisor: create → first exec".into(),
        rows,
        details: json!({
            "sequential": {
                "raw_runsc_run_detach_then_exec_true": stats(raw_seq),
                "raw_runsc_on_kraals_bundle": stats(own_seq),
                "kraal_create_to_first_exec": stats(kraal_seq),
                "kraal_up": stats(kraal_up),
                "kraal_first_exec": stats(kraal_exec),
                "kraal_warm_exec": stats(warm_exec),
            },
            "concurrent": conc,
        }),
    })
}
