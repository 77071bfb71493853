package oauth

import (
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
)

func TestMicrosoftIssuer(t *testing.T) {
	t.Parallel()
	const tid = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	now := time.Unix(1_800_000_000, 0)
	exp := numDate{now.Add(time.Hour)}
	tests := []struct {
		name, tenant string
		c            Claims
		wantErr      string
	}{
		{"tenant domain, any tid", "contoso.onmicrosoft.com",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, ""},
		{"organizations", "organizations",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, ""},
		{"tenant id matches", tid,
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, ""},
		{"tenant id differs", "00000000-0000-0000-0000-000000000001",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0", TenantID: tid}, "not the configured tenant"},
		{"issuer of another tenant than tid", "organizations",
			Claims{Issuer: "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0", TenantID: tid}, "issuer"},
		{"v1 issuer", "organizations",
			Claims{Issuer: "https://sts.windows.net/" + tid + "/", TenantID: tid}, "issuer"},
		{"no tid", "organizations",
			Claims{Issuer: "https://login.microsoftonline.com/" + tid + "/v2.0"}, "no tid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := NewProvider(&project.OAuth{Provider: Microsoft, Tenant: tc.tenant, ClientID: "cid"}, Options{Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			c := tc.c
			c.Audience = audience{"cid"}
			c.Expiry = exp
			err = p.checkClaims(&c)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("checkClaims = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
