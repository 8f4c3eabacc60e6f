// Drives the chexfusion web demo in headless Debian chromium through playwright-core, the way a user would:
// open the page, choose images, set each image's view (or leave it on auto), analyse, read the findings, pick a finding, and check
// that its heat maps were painted. Prints one JSON object on stdout for tests/browser/test_browser.py.
//
// usage: node drive.mjs BASE_URL SCREENSHOT.png IMAGE=VIEW [IMAGE=VIEW ...]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [baseUrl, screenshot, ...imageArgs] = process.argv.slice(2);
if (!baseUrl || !screenshot || imageArgs.length === 0) {
  console.error("usage: node drive.mjs BASE_URL SCREENSHOT.png IMAGE=VIEW [IMAGE=VIEW ...]");
  process.exit(2);
}
const images = imageArgs.map((arg) => {
  const at = arg.lastIndexOf("=");
  return { file: arg.slice(0, at), view: arg.slice(at + 1) };
});
const TIMEOUT = 60_000;

const profile = mkdtempSync(path.join(tmpdir(), "chexfusion-chromium-"));  // an empty --user-data-dir
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"],
  viewport: { width: 1280, height: 900 },
  timeout: TIMEOUT,
});
const report = { external_requests: [], console_errors: [] };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(baseUrl) && !url.startsWith("data:") && !url.startsWith("blob:")) {
      report.external_requests.push(url);
    }
  });
  page.on("console", (message) => { if (message.type() === "error") report.console_errors.push(message.text()); });
  page.on("pageerror", (error) => report.console_errors.push(String(error)));

  await page.goto(`${baseUrl}/`);
  await page.waitForSelector('body[data-state="ready"]');
  report.run_info = await page.textContent("#run-info");
  report.classes_field_visible = await page.isVisible("#classes-input");  // text-query runs only

  await page.setInputFiles("#file-input", images.map((image) => image.file));
  const selects = page.locator("select.view-select");
  report.rows = await selects.count();
  for (let i = 0; i < images.length; i++) await selects.nth(i).selectOption(images[i].view);
  const scoredAs = () => page.$$eval("td.view-used", (cells) => cells.map((c) => c.textContent));
  report.scored_as_before = await scoredAs();

  await page.click("#submit");
  await page.waitForSelector('body[data-state="done"], body[data-state="error"]');
  report.state = await page.getAttribute("body", "data-state");
  report.error = (await page.textContent("#error")) || "";
  if (report.state === "done") {
    report.findings = await page.$$eval("#findings li.finding", (items) => items.map((item) => ({
      class: item.dataset.class,
      probability: Number(item.dataset.probability),
      group: item.querySelector(".group").textContent,
      shown: item.querySelector(".probability").textContent,
    })));
    // pick the third finding, as a user choosing what to look at
    await page.locator("#findings li.finding button").nth(2).click();
    report.selected = await page.textContent("#selected-finding");
    report.selected_items = await page.$$eval("#findings li.finding.selected", (items) => items.map((i) => i.dataset.class));
    report.heatmaps = await page.$$eval("canvas.heat", (canvases) => canvases.map((canvas) => {
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      let painted = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
      return { image: Number(canvas.dataset.image), width: canvas.width, height: canvas.height, painted };
    }));
    report.previews_loaded = await page.$$eval(".stack img", (imgs) => imgs.map((img) => img.complete && img.naturalWidth > 0));
    report.captions = await page.$$eval(".image-card figcaption", (captions) => captions.map((c) => c.textContent));
    report.scored_as_after = await scoredAs();
  }
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
