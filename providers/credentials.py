"""SDK credentials from an integration's resolved fields: one function per cloud, used by every
client syncd builds (drivers, event queue consumers, sinks), so a role works everywhere alike.

* :func:`aws_session`: a botocore session. Base credentials are the integration's keys, else its
  profile, else botocore's standard chain. With ``role_arn`` the session's credentials are
  botocore's :class:`~botocore.credentials.DeferredRefreshableCredentials` whose refresh calls
  STS ``AssumeRole`` (with ``ExternalId``, ``RoleSessionName``, ``DurationSeconds``) signed with
  those base credentials. Nothing is fetched when the session is made (opening a driver makes
  no request); the first request fetches, and every request after checks the expiry: from
  :func:`refresh_margins` before it one caller refreshes while the others keep signing with the
  old credentials (advisory), closer than that every caller waits for the new ones (mandatory).
  botocore's credentials are thread-safe (a lock around the refresh); the S3 driver, the SQS
  consumer and the sinks use botocore's blocking clients on worker threads (not aiobotocore),
  so a refresh blocks one worker thread, never the event loop.
* :func:`azure_credential`: azure-identity's ``ClientSecretCredential`` or
  ``CertificateCredential`` for a service principal (the SDK refreshes its tokens itself), else
  None (the caller keeps its key / SAS / connection string / ``DefaultAzureCredential`` rules).
* :func:`gcp_credentials`: google-auth's ``impersonated_credentials.Credentials`` for
  ``impersonate``, with the integration's service-account key file or application default
  credentials as the source (refreshed by google-auth before expiry), else None.

Failures say what is wrong in one line naming the role or principal, never a key, a token or
the external ID; temporary secrets returned by STS are registered with
:mod:`providers.redact` the moment they arrive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from providers import errors
from providers.config import ConfigError
from providers.redact import MASK, register

log = logging.getLogger("syncd.providers")

#: the RoleSessionName when the integration gives none (what CloudTrail shows for syncd)
DEFAULT_SESSION_NAME = "syncd"
#: AssumeRole's own default DurationSeconds
DEFAULT_ROLE_SECONDS = 3600

#: STS error codes and what they mean for the role (anything else: a ProviderError)
_STS_REFUSALS: dict[str, type[errors.StorageError]] = {
    "AccessDenied": errors.PermissionDenied,
    "InvalidClientTokenId": errors.Unauthenticated,
    "SignatureDoesNotMatch": errors.Unauthenticated,
    "ExpiredToken": errors.Unauthenticated,
    "RegionDisabledException": errors.PermissionDenied,
    "ValidationError": errors.InvalidRequest,
    "MalformedPolicyDocument": errors.InvalidRequest,
    "Throttling": errors.Throttled,
    "ThrottlingException": errors.Throttled,
    "RequestLimitExceeded": errors.Throttled,
    "IDPCommunicationError": errors.TransientError,
    "InternalFailure": errors.TransientError,
    "ServiceUnavailable": errors.Throttled,
}
_ROLE_HINT = (
    "check the integration's role_arn and external_id, and that the role's trust policy lets "
    "the integration's base credentials assume it with that external ID"
)


def refresh_margins(duration: int) -> tuple[float, float]:
    """Seconds before expiry at which to refresh: (advisory, mandatory). botocore's defaults
    (15 and 10 minutes) for the usual hour; shorter sessions scale down (a third and a sixth),
    else a 15-minute session would be inside the advisory window from its first second and
    cost an AssumeRole per request."""
    return min(15 * 60, duration / 3), min(10 * 60, duration / 6)


class RoleRefused(Exception):
    """A failed AssumeRole outside a driver (queue consumers, sinks): one line naming the role.
    ``response`` has botocore's ``ClientError`` shape (``Error.Code``, ``HTTPStatusCode``) so
    callers that classify SDK errors by it (the sinks: refusal or retry) treat it alike."""

    def __init__(self, kind: type[errors.StorageError], cause: str, hint: str, code: str) -> None:
        super().__init__(f"{cause}; {hint}" if hint else cause)
        self.kind, self.cause, self.hint = kind, cause, hint
        status = {errors.PermissionDenied: 403, errors.Unauthenticated: 403}.get(kind)
        if kind is errors.InvalidRequest:
            status = 400
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def _role_failure(exc: BaseException, role_arn: str, provider: str, label: str) -> Exception:
    """The one-line error for a failed AssumeRole: names the role and STS's error code only
    (STS's message names principals, never secrets, but is prose of varying shape). With a
    ``label`` (a driver's bucket) it is that driver's :class:`~providers.errors.StorageError`,
    which :func:`providers.retry.call` passes on as is (and retries if transient); without one
    a :class:`RoleRefused`."""
    import botocore.exceptions as bexc

    cls: type[errors.StorageError] = errors.ProviderError
    code, hint = "", ""
    cause = f"cannot assume role {role_arn}"
    if isinstance(exc, bexc.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "")) or "refused"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        cls = _STS_REFUSALS.get(code) or (
            errors.TransientError if status >= 500 else errors.ProviderError
        )
        cause += f": STS {code}"
        if cls in (errors.PermissionDenied, errors.Unauthenticated):
            hint = _ROLE_HINT
        elif code == "ValidationError":
            hint = (
                "check duration_seconds against the role's maximum session duration, and "
                "session_name"
            )
    elif isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        cls, cause = errors.Unauthenticated, cause + ": no base credentials to call STS with"
        hint = (
            "give the integration access_key_id and secret_access_key (references), a "
            "profile, or run where AWS's standard chain finds credentials"
        )
    elif isinstance(exc, bexc.ProfileNotFound):
        cls, cause = errors.Unauthenticated, cause + ": profile not found"
    elif isinstance(
        exc,
        bexc.EndpointConnectionError
        | bexc.ConnectTimeoutError
        | bexc.HTTPClientError
        | ConnectionError
        | TimeoutError,
    ):
        cls, cause = errors.TransientError, cause + f": STS unreachable ({type(exc).__name__})"
    else:
        cause += f": {type(exc).__name__}"
    failure: Exception
    if label:
        failure = cls(provider, label, cause, hint=hint or None)
    else:
        failure = RoleRefused(cls, f"{provider}: {cause}", hint, code)
    failure.assume_role = True  # type: ignore[attr-defined]  # for _QuietRefresh
    return failure


class _QuietRefresh(logging.Filter):
    """botocore logs a failed refresh at WARNING with the whole traceback, then re-raises
    (mandatory) or keeps the old credentials (advisory). For a role syncd assumes: dropped
    when it re-raises (the caller reports the same error once), one line when it carries on;
    never a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not getattr(exc, "assume_role", False):
            return True
        if record.args and "mandatory" in record.args:
            return False
        record.msg, record.args, record.exc_info, record.exc_text = (
            "refreshing role credentials failed, the current ones stay in use: %s",
            (exc,),
            None,
            None,
        )
        return True


#: the temporary secret and token in STS's answer (query protocol XML, or JSON)
_STS_SECRETS = re.compile(
    r"""(<(?:SecretAccessKey|SessionToken)>|["'](?:SecretAccessKey|SessionToken)["']\s*:\s*["'])"""
    r"""[^<"']+"""
)


class _MaskStsAnswer(logging.Filter):
    """botocore's debug log (``-vv``) prints every answer's body: STS's holds the temporary
    secret and token, logged before :func:`_role_credentials` can register them for
    :mod:`providers.redact`. They are masked in the record itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Response body" in str(record.msg):
            text = record.getMessage()
            if "SecretAccessKey" in text or "SessionToken" in text:
                record.msg, record.args = _STS_SECRETS.sub(lambda m: m.group(1) + MASK, text), ()
        return True


logging.getLogger("botocore.credentials").addFilter(_QuietRefresh())
logging.getLogger("botocore.parsers").addFilter(_MaskStsAnswer())


def _role_credentials(
    base: Any,
    fields: Mapping[str, str],
    *,
    region: str | None,
    provider: str,
    label: str,
    clock: Callable[[], datetime] | None,
) -> Any:
    """Deferred, refreshable credentials of ``fields["role_arn"]``, assumed with ``base``'s."""
    from botocore.config import Config
    from botocore.credentials import DeferredRefreshableCredentials, _local_now

    role_arn = fields["role_arn"]
    duration = int(fields.get("duration_seconds") or DEFAULT_ROLE_SECONDS)
    params: dict[str, Any] = {
        "RoleArn": role_arn,
        "RoleSessionName": fields.get("session_name") or DEFAULT_SESSION_NAME,
        "DurationSeconds": duration,
    }
    if fields.get("external_id"):
        params["ExternalId"] = fields["external_id"]
    # made on first use, by the thread that first needs it: botocore calls ``fetch`` under
    # the credentials' refresh lock, so one thread at a time
    sts_client: list[Any] = []

    def fetch() -> dict[str, Any]:
        try:
            if not sts_client:
                sts_client.append(
                    base.create_client(
                        "sts",
                        region_name=region or base.get_config_variable("region") or "us-east-1",
                        # one attempt: the caller's retry loop (providers.retry, the queue
                        # consumers' backoff) retries a TransientError from here
                        config=Config(retries={"total_max_attempts": 1}),
                    )
                )
            resp = sts_client[0].assume_role(**params)
        except Exception as exc:
            raise _role_failure(exc, role_arn, provider, label) from None
        creds = resp["Credentials"]
        register(creds["SecretAccessKey"])
        register(creds["SessionToken"])
        log.info("assumed role %s until %s", role_arn, creds["Expiration"])
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),  # botocore parses it back
        }

    credentials = DeferredRefreshableCredentials(
        fetch, "assume-role", time_fetcher=clock or _local_now
    )
    # DeferredRefreshableCredentials takes no margins; its base class keeps them here
    advisory, mandatory = refresh_margins(duration)
    credentials._advisory_refresh_timeout = advisory
    credentials._mandatory_refresh_timeout = mandatory
    return credentials


def aws_session(
    fields: Mapping[str, str],
    *,
    region: str | None = None,
    provider: str = "s3",
    label: str = "",
    clock: Callable[[], datetime] | None = None,
) -> Any:
    """A ``botocore.session.Session`` whose credentials follow ``fields`` (an s3 integration's
    resolved fields; empty: the standard chain). ``provider`` and ``label`` (a driver's
    bucket) name the failing resource in a role's errors; without a label they are
    :class:`RoleRefused`. ``clock`` is what the role credentials read the time with (tests
    move it to cross into the refresh window)."""
    import botocore.session
    from botocore.credentials import CredentialProvider, CredentialResolver
    from botocore.exceptions import PartialCredentialsError

    def session() -> Any:
        made = botocore.session.Session(profile=fields.get("profile"))
        if fields.get("access_key_id") or fields.get("secret_access_key"):
            missing = [n for n in ("access_key_id", "secret_access_key") if not fields.get(n)]
            if missing:  # what botocore says of explicit keys given by half
                raise PartialCredentialsError(provider="explicit", cred_var=missing[0])
            made.set_credentials(
                fields.get("access_key_id"),
                fields.get("secret_access_key"),
                fields.get("session_token"),
            )
        return made

    base = session()
    if not fields.get("role_arn"):
        return base
    role = _role_credentials(
        base, fields, region=region, provider=provider, label=label, clock=clock
    )

    class RoleProvider(CredentialProvider):
        METHOD = "assume-role"
        CANONICAL_NAME = "custom-syncd-assume-role"

        def load(self) -> Any:
            return role

    # a session of its own: the base one keeps signing the STS calls with the base credentials
    assumed = botocore.session.Session(profile=fields.get("profile"))
    assumed.register_component("credential_provider", CredentialResolver([RoleProvider()]))
    return assumed


def boto3_session(fields: Mapping[str, str], *, service: str, region: str | None = None) -> Any:
    """:func:`aws_session` wrapped for boto3, for the queue consumers and sinks: a role that
    cannot be assumed raises :class:`RoleRefused` naming ``service`` and the role."""
    import boto3

    return boto3.session.Session(
        botocore_session=aws_session(fields, region=region, provider=service)
    )


class PrincipalRefused(Exception):
    """No token for a service principal: one line naming the principal and the OAuth error
    code (never the secret or the service's prose). ``transient``: no OAuth error came back
    (the token endpoint was unreachable or failed), so trying again may help. Raised as an
    azure-core ``ClientAuthenticationError`` subclass, see :func:`azure_credential`."""

    transient = False
    message = ""


def _principal_refused(fields: Mapping[str, str]) -> type[Exception]:
    from azure.core.exceptions import ClientAuthenticationError

    class Refused(PrincipalRefused, ClientAuthenticationError):
        def __init__(self, exc: Exception) -> None:
            text = str(getattr(exc, "message", None) or exc)
            found = re.search(r"\b(invalid_\w+|unauthorized_client|AADSTS\d+)\b", text)
            self.transient = found is None
            why = found.group(1) if found else f"no answer ({type(exc).__name__})"
            ClientAuthenticationError.__init__(
                self,
                message=f"no token for service principal {fields.get('client_id')} in tenant "
                f"{fields.get('tenant_id')}: {why}",
            )

    return Refused


class _QuietPrincipal(logging.Filter):
    """azure-identity logs a failed token request at WARNING with the service's prose before
    it raises; the caller reports :class:`PrincipalRefused`'s one line instead (the same
    failure, once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            record.levelno == logging.WARNING
            and args[:1] in (("ClientSecretCredential",), ("CertificateCredential",))
            and str(record.msg).endswith("failed: %s")
        )


logging.getLogger("azure.identity._internal.get_token_mixin").addFilter(_QuietPrincipal())


class _Principal:
    """azure-identity's credential, with its failures made :class:`PrincipalRefused`."""

    def __init__(self, credential: Any, refused: type[Exception]) -> None:
        self._credential, self._refused = credential, refused

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._call(self._credential.get_token, scopes, kwargs)

    def get_token_info(self, *scopes: str, **kwargs: Any) -> Any:
        return self._call(self._credential.get_token_info, scopes, kwargs)

    def _call(self, method: Any, scopes: tuple[str, ...], kwargs: dict[str, Any]) -> Any:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            return method(*scopes, **kwargs)
        except ClientAuthenticationError as exc:
            if isinstance(exc, PrincipalRefused):
                raise
            raise self._refused(exc) from None

    def close(self) -> None:
        self._credential.close()


def azure_credential(fields: Mapping[str, str], *, what: str = "integration") -> Any | None:
    """A token credential for a service principal in ``fields`` (an azure integration's
    resolved fields), else None: azure-identity's ``ClientSecretCredential`` or
    ``CertificateCredential`` (they cache the token and fetch a new one before it expires),
    whose failures raise :class:`PrincipalRefused`. The authority is ``authority``, else
    azure-identity's default (``AZURE_AUTHORITY_HOST``, else the public cloud); a host that is
    none of Microsoft's clouds (Azure Stack, a private cloud) is used without MSAL's instance
    discovery, which knows Microsoft's clouds only. A certificate that cannot be read or
    parsed is a ``ConfigError`` naming its path."""
    if not fields.get("tenant_id"):
        return None
    from azure.identity import AzureAuthorityHosts, CertificateCredential, ClientSecretCredential

    options: dict[str, Any] = {}
    authority = fields.get("authority")
    if authority:
        options["authority"] = authority
        host = authority.split("://")[-1].strip("/")
        known = {
            AzureAuthorityHosts.AZURE_PUBLIC_CLOUD,
            AzureAuthorityHosts.AZURE_CHINA,
            AzureAuthorityHosts.AZURE_GOVERNMENT,
        }
        if host not in known:
            options["disable_instance_discovery"] = True
    tenant, client = fields["tenant_id"], fields.get("client_id") or ""
    refused = _principal_refused(fields)
    if fields.get("client_secret"):
        return _Principal(
            ClientSecretCredential(tenant, client, fields["client_secret"], **options), refused
        )
    path = fields.get("certificate_path") or ""
    try:
        credential = CertificateCredential(
            tenant,
            client,
            certificate_path=path,
            password=fields.get("certificate_password"),
            **options,
        )
    except OSError as exc:
        raise ConfigError(
            f"{what} field 'certificate_path' refers to {path}, which cannot be read: "
            f"{exc.strerror}"
        ) from None
    except (ValueError, TypeError) as exc:
        # the parser's text is about the file's shape (never its content)
        raise ConfigError(
            f"{what} field 'certificate_path': {path} is not a PEM or PKCS12 certificate with "
            f"its private key (or certificate_password is wrong): {type(exc).__name__}"
        ) from None
    return _Principal(credential, refused)


#: what the impersonating (source) credentials need: the IAM credentials API
SOURCE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def gcp_credentials(
    fields: Mapping[str, str],
    *,
    scopes: Sequence[str],
    iam_endpoint: str | None = None,
    what: str = "integration",
) -> Any | None:
    """google-auth credentials impersonating ``fields["impersonate"]`` (a gcs integration's
    resolved fields), else None. The source is the integration's ``credentials_file`` (a
    service-account key file) or application default credentials; it needs
    ``roles/iam.serviceAccountTokenCreator`` on the target. ``iam_endpoint`` overrides
    google-auth's ``generateAccessToken`` URL (regional endpoints; tests). A source that cannot
    be loaded is a ``ConfigError``."""
    target = fields.get("impersonate")
    if not target:
        return None
    import google.auth
    import google.auth.exceptions
    from google.auth import impersonated_credentials
    from google.oauth2 import service_account

    try:
        if fields.get("credentials_file"):
            # a service-account key file, as everywhere else ``credentials_file`` is read
            source = service_account.Credentials.from_service_account_file(
                fields["credentials_file"], scopes=list(SOURCE_SCOPES)
            )
        else:
            source, _ = google.auth.default(scopes=list(SOURCE_SCOPES))
    except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{what}: cannot load the credentials that impersonate {target} ({type(exc).__name__})"
        ) from None
    endpoint = iam_endpoint
    if endpoint is not None and "{" not in endpoint:
        endpoint = (
            f"{endpoint.rstrip('/')}/v1/projects/-/serviceAccounts/{target}:generateAccessToken"
        )
    return impersonated_credentials.Credentials(
        source_credentials=source,
        target_principal=target,
        target_scopes=list(scopes),
        iam_endpoint_override=endpoint,
    )
