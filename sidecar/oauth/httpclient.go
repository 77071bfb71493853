package oauth

import (
	"net/http"
	"net/url"
)

// NewHTTPClient returns the HTTP client for every request to identity providers. With proxy set,
// every request goes through that proxy, loopback hosts included (an operator who names a proxy
// means it). With proxy nil the standard environment decides, as http.ProxyFromEnvironment does:
// HTTPS_PROXY or HTTP_PROXY, except for NO_PROXY hosts and loopback.
//
// The client has no timeout of its own: every caller bounds its requests with a context.
func NewHTTPClient(proxy *url.URL) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = http.ProxyFromEnvironment
	if proxy != nil {
		t.Proxy = http.ProxyURL(proxy)
	}
	return &http.Client{Transport: t}
}

// FailingHTTPClient returns a client whose every request fails with err: for a proxy setting that
// does not parse, so that nothing goes around the proxy the operator asked for.
func FailingHTTPClient(err error) *http.Client {
	return &http.Client{Transport: failing{err}}
}

type failing struct{ err error }

func (f failing) RoundTrip(*http.Request) (*http.Response, error) { return nil, f.err }
