//! Test guest: a route-templating guest compiled against
//! `hostnic:policy@0.1.0` (the frozen WIT of `compat-v0-1-0`). It cannot
//! know which of a pod's attachments carries the default route
//! (`attachment-facts`, 0.1.2), so it adds one for every attachment, as
//! guests of its time did; the host's tests show the host drops it from a
//! pod's second attachment.

wit_bindgen::generate!({ path: "../compat-v0-1-0/wit", world: "route-templating" });

struct CompatRoutes;

impl exports::hostnic::policy::config::Guest for CompatRoutes {
    fn validate_config(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for CompatRoutes {
    fn routes(
        _: String,
        _: Pod,
        _: Nic,
        vxnet: Vxnet,
        _: Option<String>,
        _: Vec<RouteTemplate>,
    ) -> Result<Vec<Route>, Reason> {
        Ok(vec![
            Route {
                dst: "0.0.0.0/0".to_string(),
                gw: Some(vxnet.gateway),
            },
            Route {
                dst: "172.31.0.0/16".to_string(),
                gw: None,
            },
        ])
    }
}

export!(CompatRoutes);
