//! A small builder for ONNX graphs on the protobuf types that `tract-onnx` generates with prost
//! from the official `onnx.proto` ([`tract_onnx::pb`]): nodes with one output, constant
//! initialisers (little-endian `raw_data`), and the final [`ModelProto`]. The bytes are written
//! by [`prost::Message::encode`]; nothing here encodes protobuf by hand.
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// ONNX opset the exporter targets (`LayerNormalization` needs 17; the `Reduce*` operators
/// other than `ReduceSum` still take `axes` as an attribute at 17).
pub const OPSET: i64 = 17;
/// ONNX IR version of opset 17 (ONNX 1.12).
pub const IR_VERSION: i64 = 8;

/// One dimension of a graph input or output: fixed, or named (dynamic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size (e.g. `"batch"`), chosen by the caller at run time.
    Named(String),
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// `INT`.
    Int(i64),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `FLOAT`.
    Float(f32),
}

/// An ONNX graph under construction. Names are made unique by a counter.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Declares an f32 graph input `name` of shape `dims`; returns its name.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, dims));
        name.to_string()
    }

    /// Declares the f32 value `value` as graph output `name` (an `Identity` node renames it).
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        self.nodes.push(NodeProto {
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            name: format!("{name}_identity"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(value_info(name, dims));
    }

    /// An f32 constant of shape `dims` (row-major `data`); returns its name.
    ///
    /// # Panics
    /// Never for consistent arguments; `data.len()` must be the product of `dims` (checked by
    /// a debug assertion, the exporter builds both from the same tensor).
    pub fn f32s(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let name = self.fresh(hint);
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            name: name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// An f32 scalar constant (shape `[]`).
    pub fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.f32s(hint, &[], &[v])
    }

    /// An i64 constant of shape `[data.len()]` (shapes, axes, indices); returns its name.
    pub fn i64s(&mut self, hint: &str, data: &[i64]) -> String {
        let name = self.fresh(hint);
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: DataType::Int64 as i32,
            name: name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// Adds a node `op(inputs)` with attributes `attrs` and one output; returns the output name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(op);
        let attribute = attrs
            .iter()
            .map(|(name, a)| {
                let mut p = AttributeProto {
                    name: (*name).to_string(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(v) => {
                        p.r#type = AttributeType::Int as i32;
                        p.i = *v;
                    }
                    Attr::Ints(v) => {
                        p.r#type = AttributeType::Ints as i32;
                        p.ints = v.clone();
                    }
                    Attr::Float(v) => {
                        p.r#type = AttributeType::Float as i32;
                        p.f = *v;
                    }
                }
                p
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        out
    }

    /// Number of nodes so far.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The finished model (opset [`OPSET`], IR [`IR_VERSION`]) with `metadata` as
    /// `metadata_props`.
    pub fn into_model(self, name: &str, doc: &str, metadata: &[(String, String)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "omniad".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_string(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.to_string(),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }
}
