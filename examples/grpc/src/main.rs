//! A user directory over gRPC: `package.Service` of users.proto (`GetUser`,
//! `CreateUser`, `ListUsers`), with server reflection, on tonic. The example the
//! spec reference's step (`call(method="/package.Service/GetUser", body='{"id": 1}')`)
//! runs against; user 1 exists from the start.
//!
//! The messages are written out by hand (prost derives) and the service is routed
//! by hand: no protoc and no code generation on the build machine.
//! Environment: `PORT` (50051). Listens on 127.0.0.1.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub email: String,
    #[prost(bool, tag = "4")]
    pub admin: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetUserRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateUserRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub email: String,
    #[prost(bool, tag = "3")]
    pub admin: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListUsersRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListUsersReply {
    #[prost(message, repeated, tag = "1")]
    pub users: Vec<User>,
}

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/users.bin"));

/// The users, by id.
#[derive(Default)]
struct Directory {
    users: BTreeMap<i64, User>,
}

impl Directory {
    fn get(&self, r: GetUserRequest) -> Result<User, Status> {
        self.users
            .get(&r.id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no user {}", r.id)))
    }

    fn create(&mut self, r: CreateUserRequest) -> Result<User, Status> {
        if r.name.is_empty() {
            return Err(Status::invalid_argument("a user needs a name"));
        }
        let id = self.users.keys().next_back().map_or(1, |k| k + 1);
        let user = User {
            id,
            name: r.name,
            email: r.email,
            admin: r.admin,
        };
        self.users.insert(id, user.clone());
        Ok(user)
    }

    fn list(&self, _: ListUsersRequest) -> Result<ListUsersReply, Status> {
        Ok(ListUsersReply {
            users: self.users.values().cloned().collect(),
        })
    }
}

type Shared = Arc<Mutex<Directory>>;

/// One method: a function of the directory from its request to its reply.
struct Method<Q, A>(Shared, fn(&mut Directory, Q) -> Result<A, Status>);

impl<Q: Send + 'static, A: Send + 'static> UnaryService<Q> for Method<Q, A> {
    type Response = A;
    type Future = BoxFuture<Response<A>, Status>;

    fn call(&mut self, request: Request<Q>) -> Self::Future {
        let result = {
            let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
            (self.1)(&mut d, request.into_inner())
        };
        Box::pin(async move { result.map(Response::new) })
    }
}

/// `package.Service`, routed by path as generated code would.
#[derive(Clone)]
struct Users(Shared);

impl NamedService for Users {
    const NAME: &'static str = "package.Service";
}

/// Answers `req` with `method` through tonic's unary server.
fn unary<Q, A, B>(
    method: Method<Q, A>,
    req: http::Request<B>,
) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    Q: prost::Message + Default + Send + 'static,
    A: prost::Message + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    Box::pin(async move {
        let codec = tonic_prost::ProstCodec::<A, Q>::default();
        Ok(tonic::server::Grpc::new(codec).unary(method, req).await)
    })
}

impl<B> Service<http::Request<B>> for Users
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let d = self.0.clone();
        match req.uri().path() {
            "/package.Service/GetUser" => unary(Method(d, |d, r| d.get(r)), req),
            "/package.Service/CreateUser" => unary(Method(d, Directory::create), req),
            "/package.Service/ListUsers" => unary(Method(d, |d, r| d.list(r)), req),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(50051);
    let mut directory = Directory::default();
    directory
        .create(CreateUserRequest {
            name: "alice".into(),
            email: "alice@example.com".into(),
            admin: true,
        })
        .expect("a named user");
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .build_v1()
        .expect("users.proto's descriptors");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    println!("grpc-users listening on {addr}");
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(Users(Arc::new(Mutex::new(directory))))
        .add_service(reflection)
        .serve_with_shutdown(addr, stop)
        .await
    {
        eprintln!("grpc-users: {e}");
        std::process::exit(1);
    }
}
