//! The admission webhook's answer to one `admission.k8s.io/v1` `AdmissionReview`, pure: the pod's
//! JSON patch comes from `svidcar_inject::pod_patch`, the code behind `svidcar inject`.
//!
//! What each kind of request gets (docs/injection.md, "The admission webhook"):
//! - not an `AdmissionReview` v1 with a request `uid` (not JSON, another version, no request):
//!   HTTP 400 and the reason; the API server then applies the webhook's `failurePolicy`.
//! - anything but a Pod `CREATE`, or a request without the object: allowed, unchanged, with a
//!   warning saying why (kubectl shows warnings to the user).
//! - a pod the injector skips (opted out, `hostNetwork`, already injected): allowed, unchanged,
//!   with a warning naming the reason.
//! - a pod the injector cannot mesh as asked (a bad `svidcar.io/…` annotation, a probe on an
//!   unknown named port): refused with HTTP code 400 and the injector's message, because
//!   running it unmeshed would silently drop the protection its namespace asked for.
//! - otherwise: allowed with the `JSONPatch`.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use svidcar_inject::{InjectConfig, PodDecision};

/// The webhook's answer: an `AdmissionReview` response, or an HTTP 400 with the reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// HTTP 200 with this `AdmissionReview`.
    Review(Value),
    /// HTTP 400: the body is not a review we can answer.
    BadRequest(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

const API_VERSION: &str = "admission.k8s.io/v1";

/// Answers the review in `body` for pods injected with `cfg`.
pub(crate) fn answer(body: &[u8], cfg: &InjectConfig) -> Answer {
    let review: Review = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Answer::BadRequest(format!(
                "the body is not an AdmissionReview ({API_VERSION}): {e}"
            ))
        }
    };
    if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
        return Answer::BadRequest(format!(
            "expected apiVersion {API_VERSION} kind AdmissionReview, got apiVersion {:?} kind {:?} \
             (set admissionReviewVersions: [v1] in the MutatingWebhookConfiguration)",
            review.api_version, review.kind
        ));
    }
    let Some(request) = review.request else {
        return Answer::BadRequest("the AdmissionReview has no request".to_owned());
    };
    if request.uid.is_empty() {
        return Answer::BadRequest("the AdmissionReview's request has no uid".to_owned());
    }
    let uid = request.uid.clone();
    let pod_name = pod_name(&request);
    let gvk = &request.kind;
    if (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()) != ("", "v1", "Pod")
        || request.operation != "CREATE"
    {
        return Answer::Review(allowed(
            &uid,
            None,
            Some(format!(
                "svidcar: only Pod CREATE requests are injected; {} {}/{} {} left unchanged",
                request.operation, gvk.group, gvk.version, gvk.kind
            )),
        ));
    }
    let Some(pod) = request.object.as_ref() else {
        return Answer::Review(allowed(
            &uid,
            None,
            Some(format!(
                "svidcar: the request for pod {pod_name} carries no object; left unchanged"
            )),
        ));
    };
    match svidcar_inject::pod_patch(pod, cfg) {
        Ok(PodDecision::Inject(ops)) => {
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(patch);
            Answer::Review(allowed(&uid, Some(encoded), None))
        }
        Ok(PodDecision::Skip(reason)) => Answer::Review(allowed(
            &uid,
            None,
            Some(format!("svidcar: pod {pod_name} not injected: {reason}")),
        )),
        Err(e) => Answer::Review(review_json(
            &uid,
            json!({
                "allowed": false,
                "status": {
                    "code": 400,
                    "reason": "BadRequest",
                    "message": format!("svidcar: pod {pod_name} cannot be injected: {e}"),
                },
            }),
        )),
    }
}

/// `namespace/name` (or `generateName…`) of the pod under review, for messages.
fn pod_name(request: &Request) -> String {
    let meta = request.object.as_ref().and_then(|o| o.get("metadata"));
    let name = request
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| meta.and_then(|m| m.get("name")?.as_str().map(str::to_owned)))
        .or_else(|| {
            meta.and_then(|m| m.get("generateName")?.as_str())
                .map(|g| format!("{g}…"))
        })
        .unwrap_or_else(|| "(unnamed)".to_owned());
    match request.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name,
    }
}

fn allowed(uid: &str, patch: Option<String>, warning: Option<String>) -> Value {
    let mut response = json!({ "allowed": true });
    if let Some(patch) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(patch);
    }
    if let Some(w) = warning {
        response["warnings"] = json!([w]);
    }
    review_json(uid, response)
}

fn review_json(uid: &str, mut response: Value) -> Value {
    response["uid"] = json!(uid);
    json!({
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(kind: &str, operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": operation,
                "object": object,
            }
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "web-", "annotations": annotations},
            "spec": {"containers": [{"name": "web", "image": "nginx",
                                     "ports": [{"containerPort": 80}]}]},
        })
    }

    fn response(a: Answer) -> Value {
        match a {
            Answer::Review(v) => {
                assert_eq!(v["apiVersion"], API_VERSION);
                assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
                v["response"].clone()
            }
            Answer::BadRequest(e) => panic!("bad request: {e}"),
        }
    }

    #[test]
    fn a_pod_gets_the_injectors_patch() {
        let cfg = InjectConfig::default();
        let r = response(answer(&review("Pod", "CREATE", pod(json!({}))), &cfg));
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&patch).unwrap();
        let expected = match svidcar_inject::pod_patch(&pod(json!({})), &cfg).unwrap() {
            PodDecision::Inject(ops) => serde_json::to_value(ops).unwrap(),
            PodDecision::Skip(r) => panic!("skipped: {r}"),
        };
        assert_eq!(ops, expected);
        assert!(!ops.as_array().unwrap().is_empty());
    }

    #[test]
    fn opted_out_pods_and_other_requests_pass_unchanged_with_a_warning() {
        let cfg = InjectConfig::default();
        let r = response(answer(
            &review("Pod", "CREATE", pod(json!({"svidcar.io/inject": "false"}))),
            &cfg,
        ));
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none());
        assert!(r["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("svidcar: pod shop/web-… not injected: "));
        let r = response(answer(&review("Pod", "UPDATE", pod(json!({}))), &cfg));
        assert!(r.get("patch").is_none());
        assert_eq!(
            r["warnings"][0],
            "svidcar: only Pod CREATE requests are injected; UPDATE /v1 Pod left unchanged"
        );
        let r = response(answer(&review("Service", "CREATE", json!({})), &cfg));
        assert!(r.get("patch").is_none());
    }

    #[test]
    fn a_bad_annotation_is_refused_with_the_injectors_message() {
        let cfg = InjectConfig::default();
        let r = response(answer(
            &review(
                "Pod",
                "CREATE",
                pod(json!({"svidcar.io/mtls": "sometimes"})),
            ),
            &cfg,
        ));
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("svidcar: pod shop/web-… cannot be injected: ")
                && msg.contains("svidcar.io/mtls"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_reviews_are_bad_requests_that_say_why() {
        let cfg = InjectConfig::default();
        let bad = |body: &[u8]| match answer(body, &cfg) {
            Answer::BadRequest(e) => e,
            Answer::Review(v) => panic!("answered {v}"),
        };
        assert!(bad(b"{").contains("not an AdmissionReview"));
        assert!(
            bad(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
                .contains("admissionReviewVersions: [v1]")
        );
        assert_eq!(
            bad(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            "the AdmissionReview has no request"
        );
        assert!(bad(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","kind":{"kind":"Pod"}}}"#
        )
        .contains("no uid"));
    }
}
