//! The WIT bindings, generated in this one module from the contract
//! (`wit/policy.wit` at the repository root).

wit_bindgen::generate!({
    path: "../../wit",
    world: "vxnet-selection",
});
