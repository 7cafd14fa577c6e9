//! Every supported form of method, argument and result.
use rrpc_core::typed::ServiceError;
use rrpc_core::{Callback, Error, RemoteError, TypedProxy, Value};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug)]
pub struct ShapeError(Error);

impl From<Error> for ShapeError {
    fn from(e: Error) -> Self {
        ShapeError(e)
    }
}

impl ServiceError for ShapeError {
    fn to_remote(&self) -> RemoteError {
        RemoteError::from(self.0.clone())
    }
}

pub type ShapeResult<T> = Result<T, ShapeError>;

#[rrpc_proxy_derive::service]
pub trait Shapes {
    fn nothing(&self);
    fn area(&self, width: f64, height: f64) -> f64;
    fn centre(&self, points: Vec<Point>) -> Option<Point>;
    fn checked(&self, n: u32) -> Result<u32, ShapeError>;
    fn aliased(&self, n: u32) -> ShapeResult<u32>;
    fn remote_error(&self) -> Result<(), RemoteError>;
    fn dynamic(&self, anything: Value) -> Value;
    fn child(&self) -> ShapesProxy;
    fn children(&self, n: usize) -> Vec<ShapesProxy>;
    fn each(&self, f: Callback<Point, bool>) -> Result<usize, Error>;
    async fn later(&self, ms: u64) -> String;
    async fn later_checked(&self) -> Result<(), ShapeError>;
    /// A method with a default body.
    fn twice(&self, x: f64) -> f64 {
        x * 2.0
    }
    async fn default_async(&self) -> u8 {
        7
    }
    #[rrpc(name = "renamed_on_the_wire")]
    fn renamed(&self) -> bool;
    #[rrpc(get)]
    fn colour(&self) -> String;
    #[rrpc(set)]
    fn set_colour(&self, colour: String);
    #[rrpc(get, name = "size")]
    async fn size_attr(&self) -> Result<u64, ShapeError>;
    #[rrpc(set, name = "size")]
    fn resize(&self, size: u64) -> Result<(), ShapeError>;
}

fn typed_calls(shapes: &ShapesProxy) {
    let _: rrpc_core::TypedCall<f64> = shapes.area(1.0, 2.0);
    let _: rrpc_core::TypedCall<u32, ShapeError> = shapes.checked(1);
    let _: rrpc_core::TypedCall<u32, ShapeError> = shapes.aliased(1);
    let _: rrpc_core::TypedAsyncResult<String> = shapes.later_async(5);
    let _: rrpc_core::TypedCall<()> = shapes.set_colour("red".into());
    let _: rrpc_core::TypedCall<(), ShapeError> = shapes.resize(3);
    let _: rrpc_core::TypedCall<u64, ShapeError> = shapes.size_attr();
    let _: rrpc_core::TypedCall<Vec<ShapesProxy>> = shapes.children(2);
    let _ = shapes.each(Callback::new(|p: Point| p.x > p.y));
}

fn main() {
    let _ = typed_calls;
    let names: Vec<String> = ShapesProxy::declared_members()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(names.contains(&"renamed_on_the_wire".to_owned()));
    assert!(names.contains(&"size".to_owned()));
}
