//! `faultbox generate`: failure scenarios from a spec's `scenario()` registrations.
//!
//! For every dependency (service S depends on D) it writes one `fault_assumption` per
//! failure mode: network faults on S's side (D refused, slow, reset) and disk faults
//! on D (EIO, ENOSPC, slow fsync); a `fault_matrix` composing them with the scenario
//! (smoke tests: add `overrides=` with expectations); and a partition of S and D as a
//! standalone test. The files `load()` services and scenarios from the files that
//! declare them, so they run as they are.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use faultbox_spec::model::{ScenarioDecl, Spec};

/// One generated fault assumption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    pub name: String,
    /// `network` or `disk`.
    pub category: &'static str,
    /// The service the fault is installed on.
    pub target: String,
    /// The dependency it simulates failing.
    pub dependency: String,
    /// Keyword and fault, e.g. `("connect", "deny(\"ECONNREFUSED\")")`.
    pub fault: (&'static str, &'static str),
    pub description: String,
}

/// What to generate.
pub struct Options {
    pub scenario: Option<String>,
    pub service: Option<String>,
    /// `network`, `disk` or `all`.
    pub category: String,
    /// Whether existing files may be replaced (`--force`).
    pub existing: crate::output::Existing,
}

/// The mutations of `spec`, filtered by `opts`.
pub fn mutations(spec: &Spec, opts: &Options) -> Vec<Mutation> {
    const NETWORK: [(&str, (&str, &str), &str); 3] = [
        (
            "down",
            ("connect", "deny(\"ECONNREFUSED\")"),
            "refuses connections",
        ),
        (
            "slow",
            ("connect", "delay(\"500ms\")"),
            "is slow to connect to",
        ),
        (
            "reset",
            ("recvfrom", "deny(\"ECONNRESET\")"),
            "resets connections",
        ),
    ];
    const DISK: [(&str, (&str, &str), &str); 3] = [
        (
            "disk_eio",
            ("write", "deny(\"EIO\")"),
            "gets I/O errors writing to disk",
        ),
        (
            "disk_full",
            ("write", "deny(\"ENOSPC\")"),
            "has a full disk",
        ),
        (
            "slow_fsync",
            ("fsync", "delay(\"500ms\")"),
            "has a slow fsync",
        ),
    ];
    let wanted = |category: &str, dependency: &str| {
        (opts.category == "all" || opts.category == category)
            && opts.service.as_deref().is_none_or(|s| s == dependency)
    };
    let mut out = Vec::new();
    let mut disk_done = std::collections::BTreeSet::new();
    for svc in &spec.services {
        for dep in &svc.depends_on {
            for (suffix, fault, what) in NETWORK {
                if wanted("network", dep) {
                    out.push(Mutation {
                        name: format!("{dep}_{suffix}"),
                        category: "network",
                        target: svc.name.clone(),
                        dependency: dep.clone(),
                        fault,
                        description: format!("{dep} {what} (seen from {})", svc.name),
                    });
                }
            }
            if disk_done.insert(dep.clone()) {
                for (suffix, fault, what) in DISK {
                    if wanted("disk", dep) {
                        out.push(Mutation {
                            name: format!("{dep}_{suffix}"),
                            category: "disk",
                            target: dep.clone(),
                            dependency: dep.clone(),
                            fault,
                            description: format!("{dep} {what}"),
                        });
                    }
                }
            }
        }
    }
    // Two dependents of one service get the same network names: keep them apart.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for m in &mut out {
        let n = seen.entry(m.name.clone()).or_default();
        *n += 1;
        if *n > 1 {
            m.name = format!("{}_from_{}", m.name, m.target);
        }
    }
    out
}

/// The relative path from directory `from` to `to`, for `load()`.
fn relative(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (from, to) = (abs(from), abs(to));
    let fc: Vec<Component> = from.components().collect();
    let tc: Vec<Component> = to.components().collect();
    let common = fc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..fc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c.as_os_str());
    }
    out.to_string_lossy().into_owned()
}

/// The text of one generated file for `scenarios`, written into `dir`.
pub fn render(
    spec: &Spec,
    spec_arg: &str,
    scenarios: &[&ScenarioDecl],
    muts: &[Mutation],
    dir: &Path,
) -> String {
    let mut s = String::new();
    let names: Vec<&str> = scenarios.iter().map(|x| x.name.as_str()).collect();
    let _ = writeln!(
        s,
        "# Generated by `faultbox generate {spec_arg}` for {}.",
        names.join(", ")
    );
    let _ = writeln!(
        s,
        "# One fault_assumption per dependency and failure mode, composed with the scenario"
    );
    let _ = writeln!(
        s,
        "# in a fault_matrix (smoke tests: add overrides= with what correct means), and"
    );
    let _ = writeln!(s, "# a partition of each dependency as a test of its own.");
    // Group the symbols to load by the file that declares them.
    let mut loads: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut services_used: Vec<&str> = muts
        .iter()
        .flat_map(|m| [m.target.as_str(), m.dependency.as_str()])
        .collect();
    for svc in &spec.services {
        for dep in &svc.depends_on {
            services_used.extend([svc.name.as_str(), dep.as_str()]);
        }
    }
    services_used.sort_unstable();
    services_used.dedup();
    for name in services_used {
        if let Some(svc) = spec.service(name) {
            loads
                .entry(relative(dir, Path::new(&svc.declared_at.file)))
                .or_default()
                .push(variable(name));
        }
    }
    for sc in scenarios {
        loads
            .entry(relative(dir, Path::new(&sc.file)))
            .or_default()
            .push(sc.name.clone());
    }
    for (file, mut symbols) in loads {
        symbols.dedup();
        let quoted: Vec<String> = symbols.iter().map(|x| format!("{x:?}")).collect();
        let _ = writeln!(s, "load({file:?}, {})", quoted.join(", "));
    }
    for category in ["network", "disk"] {
        let of: Vec<&Mutation> = muts.iter().filter(|m| m.category == category).collect();
        if of.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n# {category} faults");
        for m in of {
            let _ = writeln!(
                s,
                "{} = fault_assumption({:?},\n    target = {},\n    {} = {},\n    description = {:?},\n)",
                m.name,
                m.name,
                variable(&m.target),
                m.fault.0,
                m.fault.1,
                m.description
            );
        }
    }
    if !muts.is_empty() {
        let faults: Vec<&str> = muts.iter().map(|m| m.name.as_str()).collect();
        let _ = writeln!(
            s,
            "\nfault_matrix(\n    scenarios = [{}],\n    faults = [{}],\n)",
            names.join(", "),
            faults.join(", ")
        );
    }
    let mut partitions = Vec::new();
    for svc in &spec.services {
        for dep in &svc.depends_on {
            partitions.push((svc.name.clone(), dep.clone()));
        }
    }
    for (a, b) in partitions {
        for sc in scenarios {
            let _ = writeln!(
                s,
                "\ndef test_partition_{a}_{b}_{}():\n    partition({}, {}, run = {})",
                sc.name,
                variable(&a),
                variable(&b),
                sc.name
            );
        }
    }
    s
}

/// The spec's variable holding a service is taken to be its name (as `faultbox init`
/// and the examples write it).
fn variable(service: &str) -> String {
    service.replace('-', "_")
}

/// What `faultbox generate` makes of a spec, before anything is written.
pub struct Generated {
    /// The scenarios generated for.
    pub scenarios: Vec<String>,
    pub mutations: Vec<Mutation>,
    /// Each file to write and its text.
    pub files: Vec<(PathBuf, String)>,
}

/// Loads `spec_path` and generates its files (`output`: one file for everything,
/// else `<scenario>.faults.star` beside the spec); writes nothing.
pub fn generate(
    spec_path: &Path,
    output: Option<&Path>,
    opts: &Options,
) -> Result<Generated, String> {
    let loaded = faultbox_spec::load(spec_path).map_err(|e| e.to_string())?;
    if !["network", "disk", "all"].contains(&opts.category.as_str()) {
        return Err(format!(
            "--category {}: expected network, disk or all",
            opts.category
        ));
    }
    let spec = &loaded.spec;
    let scenarios: Vec<&ScenarioDecl> = spec
        .scenarios
        .iter()
        .filter(|s| opts.scenario.as_deref().is_none_or(|n| n == s.name))
        .collect();
    if scenarios.is_empty() {
        return Err(match &opts.scenario {
            Some(n) => format!(
                "--scenario {n}: no scenario() of that name in {}",
                spec_path.display()
            ),
            None => format!(
                "{}: no scenario() registrations to generate from",
                spec_path.display()
            ),
        });
    }
    if let Some(svc) = &opts.service {
        if !spec.services.iter().any(|s| s.depends_on.contains(svc)) {
            return Err(format!(
                "--service {svc}: no service depends on it, so there is nothing to fail"
            ));
        }
    }
    let muts = mutations(spec, opts);
    let spec_arg = spec_path.display().to_string();
    let dir = spec_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let planned: Vec<(PathBuf, Vec<&ScenarioDecl>)> = match output {
        Some(path) => vec![(path.to_path_buf(), scenarios.clone())],
        None => scenarios
            .iter()
            .map(|s| (dir.join(format!("{}.faults.star", s.name)), vec![*s]))
            .collect(),
    };
    let files = planned
        .into_iter()
        .map(|(path, scs)| {
            let file_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let text = render(spec, &spec_arg, &scs, &muts, &file_dir);
            (path, text)
        })
        .collect();
    Ok(Generated {
        scenarios: scenarios.iter().map(|s| s.name.clone()).collect(),
        mutations: muts,
        files,
    })
}

/// Runs the command; returns the exit code.
pub fn run(spec_path: &Path, output: Option<&Path>, opts: Options, dry_run: bool) -> i32 {
    let fail = |m: String| {
        eprintln!("faultbox: error: {m}");
        1
    };
    let generated = match generate(spec_path, output, &opts) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    if dry_run {
        use std::fmt::Write as _;
        let mut out = String::new();
        for sc in &generated.scenarios {
            for m in &generated.mutations {
                let _ = writeln!(
                    out,
                    "{sc}: {} ({}) target={} {}={}",
                    m.name, m.category, m.target, m.fault.0, m.fault.1
                );
            }
        }
        let _ = writeln!(
            out,
            "{} scenarios × {} faults",
            generated.scenarios.len(),
            generated.mutations.len()
        );
        return match crate::stdout::write(&out) {
            Ok(()) => 0,
            Err(e) => fail(e),
        };
    }
    let what = if output.is_some() { "--output: " } else { "" };
    if let Err(e) = crate::output::check_all(
        generated.files.iter().map(|(p, _)| p.as_path()),
        opts.existing,
    ) {
        return fail(format!("{what}{e}"));
    }
    for (path, text) in &generated.files {
        if let Err(e) = crate::output::write(path, text, opts.existing) {
            return fail(format!("{what}{e}"));
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/a/b"), Path::new("/a/b/c.star")),
            "c.star"
        );
        assert_eq!(
            relative(Path::new("/a/x"), Path::new("/a/b/c.star")),
            "../b/c.star"
        );
    }
}
