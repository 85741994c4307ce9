//! Runs the scripted model server from a scenario file, for manual runs and for agents
//! inside sandboxes: `kraal-scripted-model SCENARIO.json [ADDR]`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: kraal-scripted-model SCENARIO.json [ADDR]");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("kraal-scripted-model: cannot read {path}: {e}");
        std::process::exit(2)
    });
    let scenario = kraal_testkit::Scenario::from_json(&text).unwrap_or_else(|e| {
        eprintln!("kraal-scripted-model: invalid scenario {path}: {e}");
        std::process::exit(2)
    });
    let addr = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("127.0.0.1:0")
        .parse()
        .unwrap_or_else(|e| {
            eprintln!("kraal-scripted-model: invalid address: {e}");
            std::process::exit(2)
        });
    let m = kraal_testkit::ScriptedModel::start_on(addr, scenario).unwrap_or_else(|e| {
        eprintln!("kraal-scripted-model: cannot listen: {e}");
        std::process::exit(1)
    });
    println!("{}", m.base_url());
    let _keep = m;
    loop {
        std::thread::park();
    }
}
