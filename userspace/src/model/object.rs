//! The compact form of a parsed object, made right after parsing: all the store keeps.

use std::sync::Arc;

use super::service::{service_from_k8s, Converted, ServiceInfo};
use super::slice::{slice_from_k8s, SliceInfo};
use crate::source::{Object, ObjectMapper, ObjectRef};

/// A Service or EndpointSlice converted to the model's compact types (a
/// few hundred bytes instead of the k8s object's several kilobytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelObject {
    /// A Service, or why it is invalid (naming the field).
    Service {
        /// Which Service.
        object: ObjectRef,
        /// The conversion result.
        result: Result<Converted<ServiceInfo>, String>,
    },
    /// An EndpointSlice (slices are never invalid as a whole).
    EndpointSlice {
        /// Which slice.
        object: ObjectRef,
        /// The conversion result.
        converted: Converted<SliceInfo>,
    },
    /// Any other kind: the store ignores it.
    Other,
}

impl ModelObject {
    /// Converts `object`; `node_name` decides which endpoints are local.
    pub fn from_object(object: &Object, node_name: Option<&str>) -> ModelObject {
        match object {
            Object::Service(service) => ModelObject::Service {
                object: object.object_ref(),
                result: service_from_k8s(service),
            },
            Object::EndpointSlice(slice) => ModelObject::EndpointSlice {
                object: object.object_ref(),
                converted: slice_from_k8s(slice, node_name),
            },
            _ => ModelObject::Other,
        }
    }

    /// A mapper for the source (`parse_manifest_with`, `load_dir_with`,
    /// `ManifestWatcher::start_mapped`) that converts each object as soon as
    /// it is parsed, so the k8s objects never pile up.
    pub fn mapper(node_name: Option<String>) -> Arc<ObjectMapper<ModelObject>> {
        Arc::new(move |object: Object| ModelObject::from_object(&object, node_name.as_deref()))
    }
}
