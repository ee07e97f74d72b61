mod datastore;
fn main() {}
