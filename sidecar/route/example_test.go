package route_test

import (
	"fmt"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/route"
)

func Example() {
	table, errs := route.New([]project.Project{
		{Name: "client-a", Enabled: true, Senders: []string{"noreply@client-a.example", "@client-a.example"}},
		{Name: "client-b", Enabled: false, Senders: []string{"billing@client-b.example"}},
		{Name: "client-c", Enabled: true, Senders: []string{"billing@client-b.example"}},
	})
	for _, err := range errs {
		fmt.Println("conflict:", err)
	}
	for _, sender := range []string{"NoReply@Client-A.example", "someone@client-a.example", "billing@client-b.example", "someone@other.example", ""} {
		name, ok := table.Lookup(sender)
		fmt.Printf("%q -> %q %v\n", sender, name, ok)
	}
	fmt.Println(table.ServesDomain("client-a.example"), table.Domains())
	// Output:
	// conflict: sender "billing@client-b.example" is claimed by projects "client-b" and "client-c": "client-b" serves it
	// "NoReply@Client-A.example" -> "client-a" true
	// "someone@client-a.example" -> "client-a" true
	// "billing@client-b.example" -> "client-b" true
	// "someone@other.example" -> "" false
	// "" -> "" false
	// true [client-a.example client-b.example]
}
