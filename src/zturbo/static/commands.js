// "Copy as CLI / curl": the command line that makes an image again, from its stored Request.
// Fields equal to Request's own defaults (GET /api/options: request_defaults) are left out;
// prompt, seed, size and steps are always written so the command stands on its own.
"use strict";

const ZCommands = (() => {
  const ALWAYS = ["seed", "width", "height", "steps"];
  // Request field -> zturbo generate flag (lists join with commas)
  const FLAGS = {
    seed: "--seed", width: "--width", height: "--height", steps: "--steps",
    negative_prompt: "--negative-prompt", guidance: "--guidance", shift: "--shift",
    max_sequence_length: "--max-sequence-length", template: "--template",
    hidden_layer: "--hidden-layer", long_prompt: "--long-prompt", dype: "--dype",
    dype_scale: "--dype-scale", dype_exponent: "--dype-exponent", dype_base: "--dype-base",
    slg_scale: "--slg-scale", slg_layers: "--slg-layers", slg_start: "--slg-start",
    slg_stop: "--slg-stop", strength: "--strength", vae_tile_size: "--vae-tile-size",
    vae_tile_overlap: "--vae-tile-overlap", control_type: "--control-type",
    control_scale: "--control-scale", canny_low: "--canny-low", canny_high: "--canny-high",
    tile_factor: "--tile-factor",
  };
  // fields only the server knows how to fill (hashes, resolved bodies), or sent another way
  const SERVER_SIDE = new Set(["template_body", "image", "mask", "control_image", "embeddings_sha256",
                               "num_images", "prompt", "loras", "passes", "teleport", "vae_tiling"]);

  function quote(text) {  // POSIX shell single quotes
    const s = String(text);
    return /^[A-Za-z0-9_./:,=@+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
  }

  function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

  // The fields worth writing: always the basics, else what differs from Request's defaults.
  function essentials(request, defaults) {
    const out = {};
    for (const [name, value] of Object.entries(request)) {
      if (value === null || value === undefined || SERVER_SIDE.has(name)) continue;
      if (name === "template" && value === "none") continue;  // stored as "none": no template
      if (ALWAYS.includes(name) || !same(value, defaults[name])) out[name] = value;
    }
    return out;
  }

  function cli(request, defaults, model) {
    const parts = ["zturbo", "generate", quote(request.prompt)];
    if (model) parts.push("--model", quote(model));
    for (const [name, value] of Object.entries(essentials(request, defaults))) {
      if (!FLAGS[name]) continue;
      parts.push(FLAGS[name], quote(Array.isArray(value) ? value.join(",") : value));
    }
    for (const lora of request.loras || []) {  // by file name: run it in your LoRA folder
      parts.push("--lora", quote(`${lora.name}.safetensors:${lora.scale}`));
    }
    if (request.passes && request.passes.length) {
      parts.push("--passes", request.passes.map((p) => `${p.scale}:${p.steps}:${p.strength}`).join(","));
    }
    if (request.teleport === false) parts.push("--no-teleport");
    if (request.vae_tiling) parts.push("--vae-tiling");
    if (request.image) parts.push("--image", "SOURCE.png");
    if (request.mask) parts.push("--mask", "MASK.png");
    if (request.control_image) parts.push("--control-image", "CONTROL.png");
    return parts.join(" ");
  }

  function body(request, defaults) {  // a POST /api/generate (or /api/jobs/edit) body
    const out = { prompt: request.prompt, ...essentials(request, defaults) };
    if (request.loras && request.loras.length) {
      out.loras = request.loras.map((l) => ({ name: l.name, scale: l.scale }));
    }
    if (request.passes && request.passes.length) out.passes = request.passes;
    if (request.teleport === false) out.teleport = false;
    if (request.vae_tiling) out.vae_tiling = true;
    return out;
  }

  function curl(request, defaults, origin, withKey) {
    const auth = withKey ? ` -H "Authorization: Bearer $ZTURBO_API_KEY"` : "";
    const fields = body(request, defaults);
    const out = `-o zturbo-${request.seed}.png`;
    if (request.control_image) {  // a ControlNet job: the control image travels as a file part
      const init = request.image ? " -F image=@SOURCE.png -F mask=@MASK.png" : "";
      return `curl -s ${origin}/api/jobs/control${auth} -F control_image=@CONTROL.png${init} ` +
             `-F ${quote("fields=" + JSON.stringify(fields))}`;
    }
    if (request.image) {  // img2img: the source travels as a file part
      const mask = request.mask ? " -F mask=@MASK.png" : "";
      return `curl -s ${origin}/api/jobs/edit${auth} -F image=@SOURCE.png${mask} ` +
             `-F ${quote("fields=" + JSON.stringify(fields))}`;
    }
    return `curl -s ${origin}/api/generate${auth} -H 'Content-Type: application/json' ` +
           `-d ${quote(JSON.stringify(fields))} ${out}`;
  }

  return { cli, curl, body, quote };
})();
