//! Choosing and configuring policies by name, from any serde format.

use crate::{
    ApacheLike, ApacheLikeConfig, CallHook, DisconnectPolicy, Elastic, ElasticConfig, Fixed,
    PolicyError, ReloadPolicy, Rolling, ScalingPolicy, TerminateChild,
};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

type Ctor<T> = Box<
    dyn Fn(&mut dyn erased_serde::Deserializer<'_>) -> Result<Box<T>, PolicyError> + Send + Sync,
>;

/// Policies by name: the built-in ones, plus any the user registers. A config file
/// names a policy and gives its settings; the registry builds it from any serde
/// deserializer (JSON, TOML, YAML...) through `erased-serde`.
///
/// ```
/// use preforkd_policies::Registry;
/// let registry = Registry::with_builtins();
/// let json = r#"{"min_spare_servers": 2, "max_spare_servers": 4}"#;
/// let mut de = serde_json::Deserializer::from_str(json);
/// let policy = registry
///     .scaling("apache_like", &mut <dyn erased_serde::Deserializer>::erase(&mut de))
///     .unwrap();
/// assert_eq!(policy.name(), "apache_like");
/// assert_eq!(policy.quiet_range(), 2..=4);
/// ```
pub struct Registry {
    scaling: BTreeMap<String, Ctor<dyn ScalingPolicy>>,
    reload: BTreeMap<String, Ctor<dyn ReloadPolicy>>,
    disconnect: BTreeMap<String, Ctor<dyn DisconnectPolicy>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("scaling", &self.scaling.keys().collect::<Vec<_>>())
            .field("reload", &self.reload.keys().collect::<Vec<_>>())
            .field("disconnect", &self.disconnect.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn decode<C: DeserializeOwned>(
    name: &str,
    de: &mut dyn erased_serde::Deserializer<'_>,
) -> Result<C, PolicyError> {
    erased_serde::deserialize(de).map_err(|e| PolicyError::Config {
        policy: name.to_string(),
        message: e.to_string(),
    })
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry {
            scaling: BTreeMap::new(),
            reload: BTreeMap::new(),
            disconnect: BTreeMap::new(),
        }
    }

    /// The built-in policies: scaling `elastic`, `apache_like`, `fixed`; reload
    /// `rolling`; disconnect `call_hook`, `terminate_child`.
    pub fn with_builtins() -> Self {
        let mut r = Registry::empty();
        r.register_scaling("elastic", |c: ElasticConfig| Elastic::new(c));
        r.register_scaling("apache_like", |c: ApacheLikeConfig| ApacheLike::new(c));
        r.register_scaling("fixed", |n: usize| Ok(Fixed(n)));
        r.register_reload("rolling", |c: Rolling| c.validate().map(|()| c));
        r.register_disconnect("call_hook", |(): ()| Ok(CallHook));
        r.register_disconnect("terminate_child", |(): ()| Ok(TerminateChild));
        r
    }

    /// Registers a scaling policy built from a deserializable configuration `C`.
    /// A later registration under the same name replaces the earlier one.
    pub fn register_scaling<C, P, F>(&mut self, name: &str, build: F)
    where
        C: DeserializeOwned,
        P: ScalingPolicy + 'static,
        F: Fn(C) -> Result<P, PolicyError> + Send + Sync + 'static,
    {
        let n = name.to_string();
        self.scaling.insert(
            name.to_string(),
            Box::new(move |de| {
                let p = build(decode(&n, de)?)?;
                Ok(Box::new(p) as Box<dyn ScalingPolicy>)
            }),
        );
    }

    /// Registers a reload policy built from a deserializable configuration `C`.
    pub fn register_reload<C, P, F>(&mut self, name: &str, build: F)
    where
        C: DeserializeOwned,
        P: ReloadPolicy + 'static,
        F: Fn(C) -> Result<P, PolicyError> + Send + Sync + 'static,
    {
        let n = name.to_string();
        self.reload.insert(
            name.to_string(),
            Box::new(move |de| {
                let p = build(decode(&n, de)?)?;
                Ok(Box::new(p) as Box<dyn ReloadPolicy>)
            }),
        );
    }

    /// Registers a disconnect policy built from a deserializable configuration `C`.
    pub fn register_disconnect<C, P, F>(&mut self, name: &str, build: F)
    where
        C: DeserializeOwned,
        P: DisconnectPolicy + 'static,
        F: Fn(C) -> Result<P, PolicyError> + Send + Sync + 'static,
    {
        let n = name.to_string();
        self.disconnect.insert(
            name.to_string(),
            Box::new(move |de| {
                let p = build(decode(&n, de)?)?;
                Ok(Box::new(p) as Box<dyn DisconnectPolicy>)
            }),
        );
    }

    fn unknown(kind: &'static str, name: &str, known: Vec<&String>) -> PolicyError {
        PolicyError::Unknown {
            kind,
            name: name.to_string(),
            known: known.into_iter().cloned().collect::<Vec<_>>().join(", "),
        }
    }

    /// Builds the scaling policy registered as `name` from `config`.
    pub fn scaling(
        &self,
        name: &str,
        config: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<Box<dyn ScalingPolicy>, PolicyError> {
        match self.scaling.get(name) {
            Some(ctor) => ctor(config),
            None => Err(Self::unknown(
                "scaling",
                name,
                self.scaling.keys().collect(),
            )),
        }
    }

    /// Builds the reload policy registered as `name` from `config`.
    pub fn reload(
        &self,
        name: &str,
        config: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<Box<dyn ReloadPolicy>, PolicyError> {
        match self.reload.get(name) {
            Some(ctor) => ctor(config),
            None => Err(Self::unknown("reload", name, self.reload.keys().collect())),
        }
    }

    /// Builds the disconnect policy registered as `name` from `config`.
    pub fn disconnect(
        &self,
        name: &str,
        config: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<Box<dyn DisconnectPolicy>, PolicyError> {
        match self.disconnect.get(name) {
            Some(ctor) => ctor(config),
            None => Err(Self::unknown(
                "disconnect",
                name,
                self.disconnect.keys().collect(),
            )),
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with_builtins()
    }
}
