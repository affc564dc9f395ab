//! The WIT bindings, generated in this one module from the contract
//! (`wit/policy.wit` at the repository root).

wit_bindgen::generate!({
    path: "../../wit",
    world: "route-templating",
    // For the tests' assert_eq! on answers.
    additional_derives: [PartialEq, Eq],
});
