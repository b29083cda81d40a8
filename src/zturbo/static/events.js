// Server-Sent Events over fetch (the API key travels as a header, which EventSource can't
// send): reads a text/event-stream response, calls handle(event, data) per message, and
// stops when handle returns true. Returns true when handle ended it, false when the stream
// ended first (the server went away). Shared by the studio (app.js) and the Lab (lab.js).
async function followEvents(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data && handle(event, JSON.parse(data))) { reader.cancel(); return true; }
    }
  }
}
