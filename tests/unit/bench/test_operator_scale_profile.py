"""benchmarks.operator_scale.profile_paths: the apiserver profile's split by request path."""

from benchmarks.operator_scale import profile_paths

SEP = "-----------+-------------------------------------------------------"


def _block(time: str, *frames: str) -> str:
    first, *rest = frames
    return "\n".join([f"      {time}   {first}", *(f"             {f}" for f in rest)])


def test_each_stack_counts_once_to_the_first_matching_path() -> None:
    traces = "\n".join(
        [
            "File: kube\nType: cpu\nDuration: 10s, Total samples = 1s (10%)",
            SEP,
            # a GC assist inside a status patch counts to the patch, not to the GC
            _block(
                "300ms",
                "runtime.gcAssistAlloc",
                "k8s.io/apiextensions-apiserver/pkg/registry/customresource.(*StatusREST).Update",
                "net/http.HandlerFunc.ServeHTTP",
            ),
            SEP,
            _block("500ms", "runtime.gcDrain", "runtime.gcBgMarkWorker"),
            SEP,
            _block("0.2s", "crypto/x509.(*Certificate).Verify", "net/http.(*conn).serve"),
            SEP,
            _block("100ms", "runtime.bgsweep"),
            SEP,
        ]
    )
    assert profile_paths(traces) == {
        "garbage collector (background)": 45.5,
        "PATCH trainingruns/status (operator, launcher)": 27.3,
        "HTTP, TLS, authn/authz, flow control": 18.2,
        "other": 9.1,
    }


def test_a_watch_counts_as_watch_though_served_by_the_list_handler() -> None:
    handlers = "k8s.io/apiserver/pkg/endpoints/handlers"
    traces = "\n".join(
        [
            SEP,
            _block("300ms", f"{handlers}.serveWatch", f"{handlers}.ListResource.func1"),
            SEP,
            _block("100ms", "cacher.(*Cacher).GetList", f"{handlers}.ListResource.func1"),
            SEP,
        ]
    )
    assert profile_paths(traces) == {"WATCH: encoding and sending events": 75.0, "LIST": 25.0}


def test_no_samples_is_an_empty_split() -> None:
    assert profile_paths("File: kube\nType: cpu\n") == {}
