//! users.proto as an encoded FileDescriptorSet, for server reflection.

fn main() {
    println!("cargo:rerun-if-changed=users.proto");
    let set = protox::compile(["users.proto"], ["."]).expect("users.proto compiles");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out.join("users.bin"), prost::Message::encode_to_vec(&set))
        .expect("write the descriptor set");
}
