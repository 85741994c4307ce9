//! The link services the daemon runs for every running workspace: the model gateway
//! (`kraal-proxy`), with credentials taken from the daemon's environment.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use kraal_core::{ModelGateway, WorkspaceId};
use kraal_engine::LinkServices;
use kraal_proxy::{
    AnthropicAuth, Credentials, GATEWAY_PORT, Gateways, StaticCredentials, Upstreams,
    placeholder_key,
};

pub struct GatewayServices {
    gateways: Gateways,
}

/// Credentials the daemon was started with: `ANTHROPIC_API_KEY` (preferred) or
/// `CLAUDE_CODE_OAUTH_TOKEN`, `OPENAI_API_KEY`, and `GEMINI_API_KEY` (or
/// `GOOGLE_API_KEY`). Empty values count as unset.
pub fn credentials_from_env() -> Credentials {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    Credentials {
        anthropic: var("ANTHROPIC_API_KEY")
            .map(AnthropicAuth::ApiKey)
            .or_else(|| var("CLAUDE_CODE_OAUTH_TOKEN").map(AnthropicAuth::OauthToken)),
        openai: var("OPENAI_API_KEY"),
        google: var("GEMINI_API_KEY").or_else(|| var("GOOGLE_API_KEY")),
    }
}

impl GatewayServices {
    pub fn new(upstreams: Upstreams, credentials: Credentials) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(GatewayServices {
            gateways: Gateways::new(upstreams, Arc::new(StaticCredentials(credentials)))?,
        }))
    }
}

#[async_trait]
impl LinkServices for GatewayServices {
    async fn attach(
        &self,
        ws: &WorkspaceId,
        host: IpAddr,
        secret: &str,
    ) -> Result<ModelGateway, String> {
        let key = placeholder_key(secret);
        let addr = self
            .gateways
            .ensure(ws.as_str(), SocketAddr::new(host, GATEWAY_PORT), &key)
            .await
            .map_err(|e| kraal_sandbox::error_chain(&e))?;
        Ok(ModelGateway {
            url: format!("http://{addr}"),
            key,
        })
    }

    fn detach(&self, ws: &WorkspaceId) {
        self.gateways.stop(ws.as_str());
    }
}
