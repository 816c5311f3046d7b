//! A minimal reader for OpenVINO IR v10 files (`.xml` graph + `.bin` constants).
//!
//! MobileStyleGAN's only public FFHQ weights ship as OpenVINO IR. We do not
//! interpret the graph at run time; this reader exists so that `clip2gan fetch`
//! can walk the graph once and pull out every constant under a module-style
//! name (see `convert.rs`). It understands just what that needs: layers with
//! their type, name, attributes and output shapes, the edges between ports,
//! and raw f32 constants.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// One node of the graph.
#[derive(Debug, Clone)]
pub struct Layer {
    pub id: u32,
    pub kind: String,
    pub name: String,
    /// Attributes of the `<data>` element (offset, size, element_type, strides, ...).
    pub data: HashMap<String, String>,
    /// Shape of each output port, in port order.
    pub output_shapes: Vec<Vec<usize>>,
}

/// The parsed graph plus its constants blob.
pub struct IrGraph {
    layers: HashMap<u32, Layer>,
    /// (to_layer, to_port) -> from_layer; ports are sorted by number in `inputs`.
    inputs: HashMap<u32, Vec<(u32, u32)>>,
    /// from_layer -> consumers.
    consumers: HashMap<u32, Vec<u32>>,
    bin: Vec<u8>,
    source: String,
}

impl IrGraph {
    pub fn parse(xml: &str, bin: Vec<u8>, source: &str) -> Result<Self> {
        let bad = |msg: String| Error::BadWeights {
            file: source.to_string(),
            detail: msg,
        };
        let doc = roxmltree::Document::parse(xml).map_err(|e| bad(format!("invalid XML: {e}")))?;
        let net = doc.root_element();
        let version = net.attribute("version").unwrap_or("?");
        if version != "10" && version != "11" {
            return Err(bad(format!("IR version {version}, expected 10")));
        }
        let mut layers = HashMap::new();
        let mut inputs: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
        let mut consumers: HashMap<u32, Vec<u32>> = HashMap::new();
        for section in net.children().filter(|n| n.is_element()) {
            match section.tag_name().name() {
                "layers" => {
                    for l in section.children().filter(|n| n.has_tag_name("layer")) {
                        let id: u32 = parse_attr(&l, "id").map_err(&bad)?;
                        let mut data = HashMap::new();
                        let mut output_shapes = Vec::new();
                        for child in l.children().filter(|n| n.is_element()) {
                            match child.tag_name().name() {
                                "data" => {
                                    for a in child.attributes() {
                                        data.insert(a.name().to_string(), a.value().to_string());
                                    }
                                }
                                "output" => {
                                    for port in child.children().filter(|n| n.has_tag_name("port"))
                                    {
                                        let dims = port
                                            .children()
                                            .filter(|n| n.has_tag_name("dim"))
                                            .map(|d| {
                                                d.text()
                                                    .unwrap_or("")
                                                    .trim()
                                                    .parse::<usize>()
                                                    .map_err(|_| {
                                                        bad(format!(
                                                            "layer {id}: bad dim {:?}",
                                                            d.text()
                                                        ))
                                                    })
                                            })
                                            .collect::<Result<Vec<_>>>()?;
                                        output_shapes.push(dims);
                                    }
                                }
                                _ => {}
                            }
                        }
                        layers.insert(
                            id,
                            Layer {
                                id,
                                kind: l.attribute("type").unwrap_or("").to_string(),
                                name: l.attribute("name").unwrap_or("").to_string(),
                                data,
                                output_shapes,
                            },
                        );
                    }
                }
                "edges" => {
                    for e in section.children().filter(|n| n.has_tag_name("edge")) {
                        let from: u32 = parse_attr(&e, "from-layer").map_err(&bad)?;
                        let to: u32 = parse_attr(&e, "to-layer").map_err(&bad)?;
                        let to_port: u32 = parse_attr(&e, "to-port").map_err(&bad)?;
                        inputs.entry(to).or_default().push((to_port, from));
                        consumers.entry(from).or_default().push(to);
                    }
                }
                _ => {}
            }
        }
        for v in inputs.values_mut() {
            v.sort();
        }
        for v in consumers.values_mut() {
            v.sort();
        }
        Ok(Self {
            layers,
            inputs,
            consumers,
            bin,
            source: source.to_string(),
        })
    }

    pub fn error(&self, detail: impl Into<String>) -> Error {
        Error::BadWeights {
            file: self.source.clone(),
            detail: detail.into(),
        }
    }

    pub fn layer(&self, id: u32) -> Result<&Layer> {
        self.layers
            .get(&id)
            .ok_or_else(|| self.error(format!("no layer {id}")))
    }

    /// Layers in id order (the exporter numbers them topologically).
    pub fn layers_sorted(&self) -> Vec<&Layer> {
        let mut v: Vec<&Layer> = self.layers.values().collect();
        v.sort_by_key(|l| l.id);
        v
    }

    /// Producers of a layer's inputs, in port order.
    pub fn inputs(&self, id: u32) -> Vec<&Layer> {
        self.inputs
            .get(&id)
            .map(|v| v.iter().filter_map(|(_, f)| self.layers.get(f)).collect())
            .unwrap_or_default()
    }

    /// Consumers that take the value itself, not only its shape.
    pub fn data_consumers(&self, id: u32) -> Vec<&Layer> {
        self.consumers
            .get(&id)
            .map(|v| {
                v.iter()
                    .filter_map(|t| self.layers.get(t))
                    .filter(|l| l.kind != "ShapeOf")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single data consumer of `id`, which must be of type `kind`.
    pub fn next(&self, id: u32, kind: &str) -> Result<&Layer> {
        let c = self.data_consumers(id);
        match c.as_slice() {
            [one] if one.kind == kind => Ok(one),
            _ => Err(self.error(format!(
                "after layer {id} ({}) expected one {kind}, found {:?}",
                self.layers.get(&id).map(|l| l.name.as_str()).unwrap_or("?"),
                c.iter()
                    .map(|l| format!("{} {}", l.kind, l.name))
                    .collect::<Vec<_>>()
            ))),
        }
    }

    /// The input of `id` that is not `known`.
    pub fn other_input(&self, id: u32, known: u32) -> Result<&Layer> {
        let ins = self.inputs(id);
        let others: Vec<_> = ins.into_iter().filter(|l| l.id != known).collect();
        match others.as_slice() {
            [one] => Ok(one),
            _ => Err(self.error(format!("layer {id}: expected exactly one other input"))),
        }
    }

    /// A constant input of `id` (optionally looking through a Reshape of a constant).
    pub fn const_input(&self, id: u32) -> Result<&Layer> {
        for l in self.inputs(id) {
            if l.kind == "Const" {
                return Ok(l);
            }
            if l.kind == "Reshape" {
                if let Some(src) = self.inputs(l.id).first() {
                    if src.kind == "Const" {
                        return Ok(src);
                    }
                }
            }
        }
        Err(self.error(format!(
            "layer {id} ({}) has no constant input",
            self.layers.get(&id).map(|l| l.name.as_str()).unwrap_or("?")
        )))
    }

    /// The non-constant input of a binary op.
    pub fn data_input(&self, id: u32) -> Result<&Layer> {
        let ins: Vec<_> = self
            .inputs(id)
            .into_iter()
            .filter(|l| l.kind != "Const")
            .collect();
        match ins.as_slice() {
            [one] => Ok(one),
            _ => Err(self.error(format!("layer {id}: expected one non-constant input"))),
        }
    }

    /// A Const layer's value as f32 with its shape.
    pub fn const_f32(&self, l: &Layer) -> Result<(Vec<f32>, Vec<usize>)> {
        if l.kind != "Const" {
            return Err(self.error(format!("layer {} ({}) is not a constant", l.id, l.name)));
        }
        if l.data.get("element_type").map(String::as_str) != Some("f32") {
            return Err(self.error(format!("constant {} is not f32", l.name)));
        }
        let offset: usize = l
            .data
            .get("offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        let size: usize = l
            .data
            .get("size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        let shape = l.output_shapes.first().cloned().unwrap_or_default();
        // Checked: a wrapped product could match a small size.
        let bytes_needed = shape.iter().try_fold(4usize, |n, &d| n.checked_mul(d));
        if bytes_needed != Some(size)
            || offset
                .checked_add(size)
                .is_none_or(|end| end > self.bin.len())
        {
            return Err(self.error(format!(
                "constant {} (offset {offset}, size {size}) does not fit shape {shape:?} or the .bin file",
                l.name
            )));
        }
        let bytes = &self.bin[offset..offset + size];
        let v = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((v, shape))
    }

    /// A scalar constant (any shape with one element).
    pub fn const_scalar(&self, l: &Layer) -> Result<f32> {
        let (v, _) = self.const_f32(l)?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(self.error(format!("constant {} is not a scalar", l.name))),
        }
    }
}

fn parse_attr<T: std::str::FromStr>(
    n: &roxmltree::Node,
    name: &str,
) -> std::result::Result<T, String> {
    n.attribute(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "missing or bad attribute {name} on <{}>",
                n.tag_name().name()
            )
        })
}

impl IrGraph {
    /// The data consumer of `id` of type `kind`, when there is exactly one such.
    pub fn next_of_kind(&self, id: u32, kind: &str) -> Result<&Layer> {
        let c: Vec<_> = self
            .data_consumers(id)
            .into_iter()
            .filter(|l| l.kind == kind)
            .collect();
        match c.as_slice() {
            [one] => Ok(one),
            _ => Err(self.error(format!(
                "layer {id}: expected one {kind} consumer, found {}",
                c.len()
            ))),
        }
    }
}
