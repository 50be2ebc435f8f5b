// Upload progress for the import form. htmx sends the form with XMLHttpRequest; its upload
// object reports bytes sent (htmx:xhr:progress mixes upload and download events, so listen here).
document.addEventListener("htmx:beforeSend", function (event) {
  var form = event.target.closest ? event.target.closest("#import-form") : null;
  if (!form) return;
  var box = form.querySelector(".upload-progress");
  var bar = form.querySelector("#upload-progress");
  var label = form.querySelector("#upload-progress-label");
  event.detail.xhr.upload.addEventListener("progress", function (progress) {
    if (!progress.lengthComputable || !progress.total) return;
    var percent = Math.round((progress.loaded / progress.total) * 100);
    box.hidden = false;
    bar.value = percent;
    label.textContent = percent + "%";
  });
});
