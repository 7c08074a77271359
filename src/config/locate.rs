//! Where each key of a YAML text is: `dhcp.subnets[0].pool` -> line and column of its value.
//! Checks that run after parsing name a key path; this turns it into a place in the file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line (1-based) and column (1-based, as serde's parser counts) of every key path's value.
#[derive(Debug, Default, Clone)]
pub struct Positions(HashMap<String, (usize, usize)>);

impl Positions {
    /// Read the positions of `text`; a text the parser cannot read gives none (the serde
    /// parse has already reported where it is broken).
    pub fn of(text: &str) -> Positions {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Positions::default();
        }
        Positions(walker.found)
    }

    /// The position of `key`, or of its nearest ancestor that has one.
    pub fn find(&self, key: &str) -> Option<(usize, usize)> {
        let mut k = key;
        loop {
            if let Some(p) = self.0.get(k) {
                return Some(*p);
            }
            let cut = k.rfind(['.', '['])?;
            k = &k[..cut];
        }
    }
}

/// One open collection while walking the events.
#[derive(Debug)]
enum Frame {
    /// A mapping; `key` is the key whose value comes next (None: a key comes next).
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    found: HashMap<String, (usize, usize)>,
}

impl Walker {
    /// The path of the value that starts now, if one does (None: a mapping key starts).
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, m: Marker) {
        let at = (m.line(), m.col() + 1);
        match ev {
            Event::Scalar(value, ..) => match self.value_path() {
                Some(p) => {
                    self.found.insert(p, at);
                }
                None => {
                    if let Some(Frame::Map { key, path }) = self.stack.last_mut() {
                        // A key with no value yet: remember where the key is, for its children.
                        self.found.entry(join(path, &value)).or_insert(at);
                        *key = Some(value);
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.found.entry(path.clone()).or_insert(at);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Positions;

    #[test]
    fn finds_block_and_flow_values() {
        let p = Positions::of("a: 1\nb:\n  - x: y\n    z: [1, {q: 2}]\nc: { d: e }\n");
        assert_eq!(p.find("a"), Some((1, 4)));
        assert_eq!(p.find("b[0].x"), Some((3, 8)));
        assert_eq!(p.find("b[0].z[1].q"), Some((4, 16)));
        assert_eq!(p.find("c.d"), Some((5, 9)));
        assert_eq!(p.find("c.missing"), p.find("c"), "nearest ancestor");
        assert_eq!(p.find("nothing"), None);
    }
}
