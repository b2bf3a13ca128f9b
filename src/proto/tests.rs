//! Statement texts, the cache, and where SQL may live.
use super::*;

#[test]
fn every_template_names_the_schema_placeholder_or_needs_none() {
    let sql = Sql::new("myschema");
    for &id in StmtId::ALL {
        let text = sql.text(id);
        assert!(!text.contains("__S__"), "{id:?}");
        if id.is_simple() {
            assert!(!text.contains('$'), "{id:?} is simple but has parameters");
        }
    }
    for id in [StmtId::Emit, StmtId::Release, StmtId::RequestRollback] {
        assert!(sql.text(id).contains("pg_notify('myschema_wake'"), "{id:?}");
    }
    assert!(sql.text(StmtId::Listen).ends_with("LISTEN myschema_wake"));
}

#[test]
fn the_cache_fills_by_id_and_clears() {
    let mut cache = StmtCache::default();
    assert!(cache.lookup(StmtId::Finish).is_none());
    cache.clear();
    assert!(cache.lookup(StmtId::RecordMigration).is_none());
}

#[test]
fn give_up_checks_as_parameters() {
    assert_eq!(GiveUpCheck::Skip.param(), None);
    assert_eq!(GiveUpCheck::HappyPath.param(), Some(false));
    assert_eq!(GiveUpCheck::RollbackPath.param(), Some(true));
}

/// The string literals of Rust source `text`, ignoring comments (where docs show users'
/// own SQL). Good enough for this crate's sources: plain and raw strings, escapes.
fn string_literals(text: &str) -> Vec<String> {
    let (mut out, mut chars) = (Vec::new(), text.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                chars.by_ref().find(|&c| c == '\n');
            }
            '\'' => {
                // A char literal ('"', '\'') or a lifetime: skip what could hide a quote.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\"'") {
                    chars.nth(1);
                } else if rest.starts_with('\\') {
                    chars.nth(2);
                }
            }
            'r' if matches!(chars.peek(), Some('#') | Some('"')) => {
                let hashes = chars.clone().take_while(|&c| c == '#').count();
                if chars.clone().nth(hashes) != Some('"') {
                    continue;
                }
                chars.nth(hashes);
                let end: String = std::iter::once('"')
                    .chain("#".repeat(hashes).chars())
                    .collect();
                let mut literal = String::new();
                while !literal.ends_with(&end) {
                    match chars.next() {
                        Some(c) => literal.push(c),
                        None => break,
                    }
                }
                out.push(literal);
            }
            '"' => {
                let mut literal = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        c => literal.push(c),
                    }
                }
                out.push(literal);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn no_sql_outside_this_module() {
    fn visit(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    assert!(files.len() > 20, "found only {files:?}");
    let keyword = |word: &str| ["SELECT", "INSERT", "UPDATE", "DELETE"].contains(&word);
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(src.join("proto"))) {
        let text = std::fs::read_to_string(file).unwrap();
        for literal in string_literals(&text) {
            if literal
                .split(|c: char| !c.is_ascii_alphabetic())
                .any(keyword)
            {
                offenders.push(format!("{}: {literal:?}", file.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "SQL outside src/proto: {offenders:#?}"
    );
    // The scanner itself finds what it must and skips comments.
    let sample =
        "// \"DELETE\"\nlet a = \"x\\\"SELECT\"; let b = r#\"UPDATE \"q\"\"#; let c = '\"';";
    assert_eq!(string_literals(sample), ["xSELECT", "UPDATE \"q\"\"#"]);
}

#[test]
fn errors_that_are_not_postgres_errors_are_other_faults() {
    let fault = Fault::from(Error::UnexpectedData("x".to_owned()));
    assert!(matches!(fault, Fault::Other(Error::UnexpectedData(_))));
}
