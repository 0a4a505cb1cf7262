//! YAML to a tree that remembers where each node was, so that every error and warning can
//! name its line.
//!
//! Built from `yaml-rust2`'s event parser. Aliases are resolved (a copy of the anchored node)
//! and merge keys (`<<: *base`, `<<: [*a, *b]`) are applied, as Compose files use them to share
//! settings between services. Scalars keep their text and whether they were quoted; what a
//! scalar means (a string, a number, a boolean) is decided by the key it belongs to, as the
//! Compose spec decides it, not by YAML 1.1's guesses (`80:80` stays `80:80`).

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A node of the document and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing at all (`volumes:\n  data:`).
    Null,
    /// The scalar's text; `quoted` when it was written in quotes or as a block.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys in file order; a key is a scalar's text.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub line: usize,
}

/// A document that is not YAML, or YAML that this loader refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct YamlError {
    pub line: usize,
    pub message: String,
}

impl Node {
    /// The scalar's text, when it is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The mapping's entries, when it is a mapping.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// A word for the kind of node, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parses one YAML document. An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    // Event by event rather than `Parser::load`, which recurses once per level of nesting
    // (a file of 100,000 nested `- ` would take the stack before the depth check saw it).
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        let end = event == Event::StreamEnd;
        builder.on_event(event, mark);
        if end || builder.error.is_some() {
            break;
        }
    }
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder.root.unwrap_or(Node {
        value: Value::Map(Vec::new()),
        line: 1,
    }))
}

/// Deeper nesting than this is refused (a hostile file would otherwise take the stack).
const MAX_DEPTH: usize = 64;
/// At most this many nodes after expanding aliases (a "billion laughs" file is refused).
const MAX_NODES: usize = 1_000_000;

enum Frame {
    Seq {
        items: Vec<Node>,
        anchor: usize,
        line: usize,
    },
    Map {
        entries: Vec<(Key, Node)>,
        /// The keys so far, to find one written twice without a quadratic scan.
        seen: HashSet<String>,
        key: Option<Key>,
        anchor: usize,
        line: usize,
    },
}

/// An anchored node, with what an alias to it adds: its nodes and its depth.
struct Anchored {
    node: Node,
    nodes: usize,
    depth: usize,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    root: Option<Node>,
    error: Option<YamlError>,
    nodes: usize,
    documents: usize,
}

impl Builder {
    fn fail(&mut self, line: usize, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                line,
                message: message.into(),
            });
        }
    }

    /// Counts `n` more nodes; false (and the error) past [`MAX_NODES`].
    fn grow(&mut self, n: usize, line: usize) -> bool {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            self.fail(
                line,
                "the document is too large (aliases expand to over a million nodes)",
            );
            return false;
        }
        true
    }

    /// Places a finished node in its parent.
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            let anchored = Anchored {
                nodes: count(&node),
                depth: depth(&node),
                node: node.clone(),
            };
            self.anchors.insert(anchor, anchored);
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    self.fail(node.line, "more than one YAML document in the file");
                } else {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries, seen, key, ..
            }) => match key.take() {
                None => match node.value {
                    Value::Scalar { text, .. } => {
                        *key = Some(Key {
                            text,
                            line: node.line,
                        })
                    }
                    Value::Null => {
                        *key = Some(Key {
                            text: String::new(),
                            line: node.line,
                        })
                    }
                    _ => {
                        let line = node.line;
                        self.fail(line, "a mapping key must be a single value");
                    }
                },
                Some(k) => {
                    if k.text != "<<" && !seen.insert(k.text.clone()) {
                        let (line, text) = (k.line, k.text.clone());
                        self.fail(line, format!("`{text}` appears twice in the same mapping"));
                        return;
                    }
                    entries.push((k, node));
                }
            },
        }
    }
}

/// Levels of lists and mappings in `node` (a scalar: 0).
fn depth(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| depth(v)).max().unwrap_or(0),
        _ => 0,
    }
}

fn count(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + count(v)).sum::<usize>(),
        _ => 1,
    }
}

/// Applies merge keys: the mapping's own keys win over merged ones, and earlier merged
/// mappings over later ones (YAML's merge key rule).
fn merge(entries: Vec<(Key, Node)>) -> Result<Vec<(Key, Node)>, YamlError> {
    if !entries.iter().any(|(k, _)| k.text == "<<") {
        return Ok(entries);
    }
    let mut own = Vec::new();
    let mut merged: Vec<Node> = Vec::new();
    for (k, v) in entries {
        if k.text == "<<" {
            match v.value {
                Value::Map(_) => merged.push(v),
                Value::Seq(items) => merged.extend(items),
                _ => {
                    return Err(YamlError {
                        line: k.line,
                        message: "`<<` merges a mapping or a list of mappings".into(),
                    })
                }
            }
        } else {
            own.push((k, v));
        }
    }
    for m in merged {
        let Value::Map(entries) = m.value else {
            return Err(YamlError {
                line: m.line,
                message: "`<<` merges a mapping or a list of mappings".into(),
            });
        };
        for (k, v) in entries {
            if !own.iter().any(|(o, _)| o.text == k.text) {
                own.push((k, v));
            }
        }
    }
    Ok(own)
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let value =
                    if !quoted && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                        Value::Null
                    } else {
                        Value::Scalar { text, quoted }
                    };
                if let Some(tag) = tag {
                    // `!!str 80:80` is a string anyway; custom tags (`!reset`, `!override`
                    // of newer Compose) are not understood.
                    if tag.suffix != "str" {
                        self.fail(
                            line,
                            format!("the YAML tag `!{}` is not supported", tag.suffix),
                        );
                        return;
                    }
                }
                if self.grow(1, line) {
                    self.finish(Node { value, line }, anchor);
                }
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if let Some(tag) = tag {
                    // `!!seq`/`!!map` say what it is anyway; `!reset []` and the like do not.
                    if !matches!(tag.suffix.as_str(), "seq" | "map") {
                        self.fail(
                            line,
                            format!("the YAML tag `!{}` is not supported", tag.suffix),
                        );
                        return;
                    }
                }
                if !self.grow(1, line) {
                    return;
                }
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(line, format!("nested more than {MAX_DEPTH} levels deep"));
                    return;
                }
                self.stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq {
                        items: Vec::new(),
                        anchor,
                        line,
                    }
                } else {
                    Frame::Map {
                        entries: Vec::new(),
                        seen: HashSet::new(),
                        key: None,
                        anchor,
                        line,
                    }
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq {
                    items,
                    anchor,
                    line,
                }) = self.stack.pop()
                {
                    self.finish(
                        Node {
                            value: Value::Seq(items),
                            line,
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    entries,
                    anchor,
                    line,
                    ..
                }) = self.stack.pop()
                {
                    match merge(entries) {
                        Ok(entries) => self.finish(
                            Node {
                                value: Value::Map(entries),
                                line,
                            },
                            anchor,
                        ),
                        Err(e) => self.error = Some(e),
                    }
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(anchored) => {
                    let (nodes, deep) = (anchored.nodes, self.stack.len() + anchored.depth);
                    let node = Node {
                        value: anchored.node.value.clone(),
                        line,
                    };
                    if deep > MAX_DEPTH {
                        self.fail(line, format!("nested more than {MAX_DEPTH} levels deep"));
                    } else if self.grow(nodes, line) {
                        self.finish(node, 0);
                    }
                }
                None => self.fail(line, "an alias to an anchor that is not defined before it"),
            },
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(line, "more than one YAML document in the file");
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> Vec<(&str, &Node)> {
        node.as_map()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.text.as_str(), v))
            .collect()
    }

    #[test]
    fn lines_scalars_and_nulls() {
        let doc = parse("services:\n  web:\n    image: nginx\n    ports:\n      - 80:80\n      - '443'\nvolumes:\n  data:\n").unwrap();
        let top = map(&doc);
        assert_eq!(top[0].0, "services");
        let web = map(map(top[0].1)[0].1);
        assert_eq!(web[0].1.as_str(), Some("nginx"));
        assert_eq!(web[0].1.line, 3);
        let Value::Seq(ports) = &web[1].1.value else {
            panic!()
        };
        assert_eq!(
            ports[0].value,
            Value::Scalar {
                text: "80:80".into(),
                quoted: false
            }
        );
        assert_eq!(
            ports[1].value,
            Value::Scalar {
                text: "443".into(),
                quoted: true
            }
        );
        assert_eq!(ports[1].line, 6);
        assert_eq!(map(top[1].1)[0].1.value, Value::Null);
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let doc = parse(
            "x-base: &base\n  restart: always\n  image: a\nservices:\n  one:\n    <<: *base\n    image: b\n  two: *base\n",
        )
        .unwrap();
        let services = map(map(&doc)[1].1);
        let one = map(services[0].1);
        assert_eq!(
            one.iter().find(|(k, _)| *k == "image").unwrap().1.as_str(),
            Some("b")
        );
        assert_eq!(
            one.iter()
                .find(|(k, _)| *k == "restart")
                .unwrap()
                .1
                .as_str(),
            Some("always")
        );
        assert_eq!(map(services[1].1).len(), 2);
    }

    #[test]
    fn bad_documents_name_their_line() {
        assert_eq!(parse("a: 1\na: 2\n").unwrap_err().line, 2);
        assert!(parse("a: 1\na: 2\n").unwrap_err().message.contains("twice"));
        assert!(parse("a: [1, 2\n").is_err());
        assert!(parse("a: *nope\n").unwrap_err().message.contains("anchor"));
        assert!(parse("a: 1\n---\nb: 2\n")
            .unwrap_err()
            .message
            .contains("more than one"));
        assert!(parse("a: !reset 1\n").unwrap_err().message.contains("tag"));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&deep).unwrap_err().message.contains("deep"));
        // Nine levels of ten aliases each: a billion nodes if expanded.
        let mut lol = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            lol += &format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
        }
        assert!(parse(&lol).unwrap_err().message.contains("too large"));
        assert_eq!(parse("").unwrap().value, Value::Map(Vec::new()));
    }

    #[test]
    fn hostile_nesting_and_tags_are_refused_without_taking_the_stack() {
        // Block nesting, which the parser's own recursion would follow to a stack overflow.
        let deep = "- ".repeat(100_000) + "x\n";
        assert!(parse(&deep).unwrap_err().message.contains("deep"));
        // An alias does not get around the depth limit: 40 levels placed 40 levels deep.
        let anchored = "[".repeat(40) + "x" + &"]".repeat(40);
        let doc = format!(
            "a: &a {anchored}\nb: {}*a{}\n",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(parse(&doc).unwrap_err().message.contains("deep"));
        assert!(parse("ports: !reset []\n")
            .unwrap_err()
            .message
            .contains("tag"));
        assert!(parse("env: !override {a: 1}\n")
            .unwrap_err()
            .message
            .contains("tag"));
        assert!(parse("a: !!map {b: 1}\n").is_ok());
        // Many keys in one mapping: found twice without a quadratic scan.
        let mut wide: String = (0..50_000).map(|i| format!("k{i}: 1\n")).collect();
        assert!(parse(&wide).is_ok());
        wide.push_str("k7: 2\n");
        assert_eq!(parse(&wide).unwrap_err().line, 50_001);
    }
}
